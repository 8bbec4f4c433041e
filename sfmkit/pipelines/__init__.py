"""User-facing jobs that chain stages."""
