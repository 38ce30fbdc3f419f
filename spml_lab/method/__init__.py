"""The method: segments by spherical k-means, the pixel-to-segment loss and its four relations.

Pure tensor functions (and the prototype memory): no network, no training loop, no file I/O.
`distributed` is here because the relations gather segments across processes.
"""
