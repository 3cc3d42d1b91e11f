"""Probability distributions over latents (the KL autoencoder's posterior)."""
