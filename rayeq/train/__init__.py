"""Training on Ray Train: the driver (checks, TorchTrainer), the per-worker loop, optimisers, probes."""
