"""Networks and what they carry (weights, whitening): imports only :mod:`sfmkit.errors` and
:mod:`sfmkit.utils`."""
