"""Evaluation protocols against ground truth (Strecha, Aachen-style night, retrieval mAP, patch
retrieval), their metrics and figures. The top library layer: protocols run whole methods
(:mod:`sfmkit.pipelines.methods`)."""
