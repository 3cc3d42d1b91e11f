"""Scripts that build training data (run as `python dataset_creation/<script>.py`)."""
