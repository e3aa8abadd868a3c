"""Formats only, no policy and no findings: byte spans, container sniffing, the one zip reader,
decompression, numpy files, plain formats, and the one safetensors header parser (:mod:`.safetensors`)."""
