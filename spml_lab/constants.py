"""The few values every layer agrees on: "unlabelled", the annotation kinds, the k-means grids.

This module is the package's lowest layer: it imports nothing, so the method, the data readers
and the pictures can all share one definition without importing each other.
"""

__all__ = [
    "IGNORE_INDEX",
    "ANNOTATIONS",
    "PSEUDO_ANNOTATIONS",
    "SHORTENED_SCRIBBLES",
    "KMEANS_GRID",
    "PAPER_KMEANS_GRID",
    "LESSON_KMEANS_GRID",
    "KMEANS_ITERATIONS",
]

IGNORE_INDEX = 255  # "unlabelled" in every SPML label map (and VOC's void border)
# the weak (and full) annotation kinds a dataset can list
ANNOTATIONS = ("full", "points", "scribbles", "boxes", "tags")
# CAM pseudo labels made from the tags / boxes lists (`label_files.write_pseudo_labels`): what
# SPML trains on for those two kinds; their tags come from the pseudo label, as for VOC's SEAM
# labels
PSEUDO_ANNOTATIONS = ("cam_tags", "cam_boxes")
# scribbles shortened to a percentage of their length, as in the paper's scribble-length study
# (ScribbleSup's scribbles at 80, 50 and 30 %); written on request by
# `make_data.write_shortened_scribbles`, they train like scribbles
SHORTENED_SCRIBBLES = ("scribbles_80", "scribbles_50", "scribbles_30")

# ---- segments: the spherical k-means grid (gy, gx) each context starts from (DESIGN.md)
# Training, and every lesson that draws training's segments. The embedded scenes are 96 px and
# the small net's embedding map 24 x 24: a 2 x 2 grid gives cells of 144 embedding pixels, as the
# paper's 6 x 6 on its 128 x 128 maps gives cells of hundreds (a 3 x 3 grid left segments of ~8
# pixels); part of the calibrated recipe (`TrainConfig`, benchmarks/calibrate.py)
KMEANS_GRID = (2, 2)
# the paper's VOC runs: 512 px crops, 128 x 128 embedding maps (the GPU preset)
PAPER_KMEANS_GRID = (6, 6)
# a relation trained alone for tens of steps on the lessons' 64 px crops (16 x 16 maps, notebooks
# 05-08): with the recipe's 2 x 2 start, 20 steps of feature affinity alone left its borrowed
# labels no better than before training (notebook 08, seed 1); 4 x 4 passes every lesson's
# checks for seeds 0 and 1, at the recipe's learning rate
LESSON_KMEANS_GRID = (4, 4)
KMEANS_ITERATIONS = 10  # spherical k-means rounds, in training and retrieval alike (the paper's)
