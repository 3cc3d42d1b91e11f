"""Evaluation scripts (run as `python metrics/<script>.py`)."""
