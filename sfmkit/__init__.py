"""sfmkit: learned Structure-from-Motion.

Stages read and write HDF5 and are chained by :mod:`sfmkit.pipelines`:
``extract`` (dense VGG16 with keypoint relocalisation, or SIFT) -> ``match`` (mutual nearest
neighbours, coarse-to-fine for dense features) -> ``verify`` (multi-homography RANSAC) ->
``map`` (pycolmap incremental mapping).
"""

__version__ = "0.1.0"
