"""Training losses of the first-stage autoencoder."""

from ldm.modules.losses.contperceptual import LPIPSWithDiscriminator

__all__ = ["LPIPSWithDiscriminator"]
