"""Feeding training: paired views, their targets, augmentation and the Ray Data pipeline."""
