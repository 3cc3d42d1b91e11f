"""Lightning modules: the KL autoencoder and the diffusion models."""
