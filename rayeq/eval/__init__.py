"""Evaluation: metrics (and, later, the frozen-encoder protocols)."""
