"""Featuremetric refinement: tracks from verified matches, dense feature windows around keypoints,
and the batched keypoint adjustment of the ``refine`` stage."""
