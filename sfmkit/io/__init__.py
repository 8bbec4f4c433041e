"""File formats and their readers and writers: images, HDF5 stage files (features, matches,
verified), pairs files, intrinsics, poses, Strecha cameras, labels and patch files. One home
per format; imports only :mod:`sfmkit.errors` and :mod:`sfmkit.utils`."""
