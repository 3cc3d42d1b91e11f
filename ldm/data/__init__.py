"""Editing datasets ({edited, edit: {c_concat, c_crossattn}} samples) and the Lightning data module."""
