"""Data: the generated scenes, weak annotations, superpixels, label files and dataset readers.

The lowest layer above `spml_lab.constants`: it knows images and labels, nothing of embeddings.
"""
