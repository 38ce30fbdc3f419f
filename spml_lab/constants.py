"""The few values every layer agrees on: the "unlabelled" index and the annotation kinds.

This module is the package's lowest layer: it imports nothing, so the method, the data readers
and the pictures can all share one definition without importing each other.
"""

__all__ = ["IGNORE_INDEX", "ANNOTATIONS", "PSEUDO_ANNOTATIONS", "SHORTENED_SCRIBBLES"]

IGNORE_INDEX = 255  # "unlabelled" in every SPML label map (and VOC's void border)
# the weak (and full) annotation kinds a dataset can list
ANNOTATIONS = ("full", "points", "scribbles", "boxes", "tags")
# CAM pseudo labels made from the tags / boxes lists (`cam.write_pseudo_labels`): what SPML trains
# on for those two kinds; their tags come from the pseudo label, as for VOC's SEAM labels
PSEUDO_ANNOTATIONS = ("cam_tags", "cam_boxes")
# scribbles shortened to a percentage of their length, as in the paper's scribble-length study
# (ScribbleSup's scribbles at 80, 50 and 30 %); written on request by
# `make_data.write_shortened_scribbles`, they train like scribbles
SHORTENED_SCRIBBLES = ("scribbles_80", "scribbles_50", "scribbles_30")
