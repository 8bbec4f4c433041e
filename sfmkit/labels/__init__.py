"""GL3D training labels: visibility by ray casting, overlap ratios and masks, Poisson surfaces."""
