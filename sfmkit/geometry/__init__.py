"""Geometry: homographies and multi-homography RANSAC, similarity alignment."""
