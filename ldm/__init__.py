"""Latent diffusion for instruction-following image editing (InstructPix2Pix layout)."""
