"""Readers for the containers pickles hide in: zip, tar, compressed streams, numpy, legacy torch."""
