"""Frozen encoders: text towers that turn instructions into cross-attention context (`modules`), and
CLIP image and text features for the similarities of an edit (`clip_image`)."""
