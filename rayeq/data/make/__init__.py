"""Making data sets: the synth3d renderer (shapes, scenes, generation), converters, previews."""
