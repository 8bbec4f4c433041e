"""Image retrieval: aggregation (MAC, R-MAC, PR-MAC), learned whitening, faiss indexes, search,
the mask triplet loss and mAP."""
