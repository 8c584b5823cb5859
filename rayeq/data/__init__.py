"""Data: the built-in 3D renderer, converters, paired views with targets, the Ray Data pipeline."""
