"""rayeq: equivariant self-supervised learning at scale with Ray."""

__version__ = "0.1.0"
