"""Network building blocks: UNet, attention, autoencoder parts, encoders, EMA."""
