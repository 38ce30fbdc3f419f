"""What a run's config builds: its embedding network and softmax head, on its device.

The one place a config becomes modules, for a run that starts (`spml_lab.training.train`) and
for a finished run that is loaded (`spml_lab.training.runs.load_run`, whose weights come from
its ``final.pt``, never from an ImageNet file). `cfg` is read by attribute only, so this layer
needs nothing of the training layer's `TrainConfig`.
"""

from __future__ import annotations

from spml_lab.devices import resolve_device
from spml_lab.nets import embedding_nets, heads

__all__ = ["build_model"]


def build_model(cfg, num_classes, *, load_pretrained=True, device=None):
    """Return ``(net, head)``: the embedding network and the softmax head of `cfg`.

    Parameters
    ----------
    cfg : TrainConfig
        Read: ``model``, ``embedding_dim``, ``width``, ``pretrained`` and ``head_dropout``.
    num_classes : int
        Classes C of the head, background included.
    load_pretrained : bool, optional
        Load ``cfg.pretrained`` into a ResNet backbone. Only a run that starts does: a resumed
        or finished run has its weights in its own files, and the ImageNet file may be gone.
    device : str or torch.device, optional
        Where to put both (`spml_lab.devices.resolve_device`: ``"auto"`` is CUDA when
        present); None leaves them on the CPU.

    Returns
    -------
    net : embedding_nets.SmallEmbeddingNet or embedding_nets.DeepLabEmbeddingNet
    head : heads.SoftmaxHead
        Both in training mode, with the weights of the current torch seed.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> cfg = SimpleNamespace(model="small", embedding_dim=8, width=8, pretrained="",
    ...                       head_dropout=0.75)
    >>> net, head = build_model(cfg, 3)
    >>> type(net).__name__, head.classifier.out_channels
    ('SmallEmbeddingNet', 3)
    """
    pretrained = cfg.pretrained if (load_pretrained and cfg.pretrained) else None
    net = embedding_nets.build_embedding_net(
        cfg.model, cfg.embedding_dim, width=cfg.width, pretrained=pretrained
    )
    head = heads.SoftmaxHead(cfg.embedding_dim, num_classes, dropout=cfg.head_dropout)
    if device is not None:
        device = resolve_device(device)
        net, head = net.to(device), head.to(device)
    return net, head
