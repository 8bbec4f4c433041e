"""Evaluation against ground truth (camera poses)."""
