"""Torch ``nn.Module``s only (no pipeline or CLI imports)."""
