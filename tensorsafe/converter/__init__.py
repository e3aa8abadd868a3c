"""The converter's parts: single-file Stable Diffusion checkpoints to the diffusers folder layout and back,
and any clean pickle checkpoint (or a folder of ``.bin`` weights) to safetensors weights
(:mod:`.to_safetensors`, :mod:`.folder_to_safetensors`, :mod:`.state_tree`).

The verb is :func:`tensorsafe.convert` (defined in :mod:`tensorsafe.converter.run`). This package is
named ``converter`` so that importing its modules never rebinds ``tensorsafe.convert``.
"""
