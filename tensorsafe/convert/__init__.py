"""Convert single-file Stable Diffusion checkpoints to the diffusers folder layout and back."""
