"""Diffusion models: the noise schedule, LatentDiffusion and its editing variant, samplers."""
