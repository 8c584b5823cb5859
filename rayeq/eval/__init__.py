"""Evaluation of frozen encoders: cached features, the protocols (linear, kNN, pair regression,
natural-image transforms) and `rayeq eval` with every result beside its floors."""
