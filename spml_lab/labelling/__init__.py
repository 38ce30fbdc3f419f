"""Labelling: dense pseudo labels made from image tags and boxes, before stage 1 trains on them.

SPML trains its semantic-annotation relation on tags and boxes through CAM pseudo labels. This
stage makes them, below training (which may consume them) and above the networks it uses:
`tag_training` trains the tag classifier (`spml_lab.nets.tag_classifier`), `cam` turns its
class activation maps into labels, and `label_files` writes them with a list file to train on
(``spml-lab cam-labels``). Their quality against the ground truth is
`spml_lab.prediction.metrics.pseudo_label_quality`.
"""
