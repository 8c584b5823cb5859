"""Hyper-parameter sweeps on Ray Tune + Optuna."""
