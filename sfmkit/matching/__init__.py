"""Descriptor matching: mutual nearest neighbours, coarse-to-fine for dense features."""
