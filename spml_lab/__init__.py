"""spml_lab: pixel-to-segment contrastive learning for weakly supervised segmentation.

One module per idea; notebooks call them with the module prefix, e.g.
``from spml_lab import synthetic`` then ``synthetic.generate(...)``.
"""

__version__ = "0.1.0"
