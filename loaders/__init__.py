"""Light loaders: read, validate, aggregate and split the HW-GPT-Bench dataset (no torch, no scikit-learn)."""
