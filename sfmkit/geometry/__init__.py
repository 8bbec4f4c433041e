"""Geometry: homographies and multi-homography RANSAC (the ``verify`` stage), similarity
alignment."""
