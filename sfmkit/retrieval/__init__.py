"""Image retrieval: global descriptors (MAC, R-MAC, PR-MAC), whitening, indexes and metrics."""
