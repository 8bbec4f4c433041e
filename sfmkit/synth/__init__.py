"""Rendered scenes with exact ground truth (for tests, benchmarks and training data)."""
