"""sfmkit: learned Structure-from-Motion.

Stages read and write HDF5 and are chained by :mod:`sfmkit.pipelines`:
``extract`` (dense VGG16 with keypoint relocalisation, learned multiscale keypoints, or SIFT)
-> ``match`` (mutual nearest neighbours, coarse-to-fine for dense features) -> ``verify``
(multi-homography RANSAC) -> ``refine`` (featuremetric keypoint adjustment) -> ``map``
(pycolmap incremental mapping).
"""

# pycolmap's extension exports its own copy of zlib's deflate functions. When the system libz is
# first loaded as a dependency of pycolmap, libz's internal calls bind to that copy, and the next
# PNG that Pillow encodes corrupts the heap ("corrupted size vs. prev_size", an abort). Loading
# libz through Python's own zlib module first keeps its calls its own. Must precede any
# pycolmap import; tests/test_cli.py checks it.
import zlib  # noqa: F401

__version__ = "0.1.0"
