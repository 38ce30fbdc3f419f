"""Networks: the embedding networks (a small CPU net, DeepLab-v2 on ResNet) and the softmax head.

They know nothing of SPML's losses; they map images to unit embeddings and embeddings to class
logits.
"""
