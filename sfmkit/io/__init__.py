"""File formats: images, HDF5 stage files, pairs files, intrinsics files."""
