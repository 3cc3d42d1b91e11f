"""Frozen text encoders that turn instructions into cross-attention context."""
