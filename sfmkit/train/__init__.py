"""Training data, losses and loops of sfmkit's learned models."""
