"""The Hugging Face Hub: the client (:mod:`.client`), HTTP range reads (:mod:`.http`, :mod:`.remote`)
and scanning or validating ``hf://`` paths (:mod:`.scan`)."""
