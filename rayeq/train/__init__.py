"""Training: the plain-PyTorch Engine and its hooks, online probes, optimisers; the Ray worker host
(loop.py) and the driver (checks, TorchTrainer)."""
