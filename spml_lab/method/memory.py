"""Prototype memory bank: the segments of the last few batches as extra contrast.

A batch of 4 images holds a few hundred segments, too few for most classes to meet their
positives. SPML therefore keeps the prototypes of the last ``memory_size`` batches (2 in the
paper's VOC runs), detached, and joins them to the current batch's prototypes in every
relation except the low-level one. Gradients never flow into the memory: it is a record of
what earlier batches looked like.

A `PrototypeMemory` is a FIFO of batches; `PrototypeMemory.bank` concatenates them into one
`MemoryBank`, the form the relations take.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spml_lab.method.relations import affinity_labels

__all__ = ["MemoryBank", "PrototypeMemory"]

_FIELDS = ("prototypes", "labels", "tags", "image_ids", "affinity_labels")


@dataclass
class MemoryBank:
    """The stored prototypes of earlier batches, concatenated oldest first.

    Attributes
    ----------
    prototypes : (M, D) float tensor
        Detached unit-row segment prototypes.
    labels : (M,) int64 tensor
        Weak label of each segment, 255 if unlabelled.
    tags : (M, C) bool tensor or None
        Tags of the segment's image; None unless every stored batch had tags.
    image_ids : (M,) int64 tensor
        Negative ids, distinct for every image ever pushed, so never equal to an image id
        (0 .. B-1) of the current batch.
    affinity_labels : (M,) int64 tensor or None
        Feature-affinity label of each segment (`relations.affinity_labels`), 255 if none;
        None unless the memory keeps them (``keep_affinity``).
    """

    prototypes: torch.Tensor
    labels: torch.Tensor
    tags: torch.Tensor | None
    image_ids: torch.Tensor
    affinity_labels: torch.Tensor | None

    @property
    def num_prototypes(self):
        """Number of stored prototypes M."""
        return self.prototypes.shape[0]


class PrototypeMemory:
    """FIFO memory of the segment prototypes of the last `size` batches.

    Parameters
    ----------
    size : int
        Batches kept; 0 disables the memory (`bank` returns None).
    affinity_threshold : float, optional
        Cosine threshold for the affinity labels computed at `push` time; use the same value
        as the feature-affinity relation.
    keep_affinity : bool, optional
        Compute and keep each pushed batch's feature-affinity labels. Only the
        feature-affinity relation reads them: a run without it passes False and saves an
        ``S x S`` prototype comparison per step (the bank's ``affinity_labels`` is then None).

    Notes
    -----
    The paper's code keeps each prototype field in a list of the last ``memory_bank_size``
    batches and shifts the stored batch indices by the batch size after every step so that
    they never meet the current batch's. Here each pushed image gets the id
    ``-1 - (images pushed before it)``: negative, hence never a current id, and distinct
    across all pushes, so images in memory remain separate images.

    The affinity labels of a memory segment depend only on its (frozen) prototype and the
    labels of its image's segments, so they are computed once when the batch is pushed; the
    paper's code recomputes them every step from the same frozen values, with the same result.

    Examples
    --------
    >>> from spml_lab.method.clustering import build_segments
    >>> memory = PrototypeMemory(2)
    >>> emb = torch.eye(3)[None]
    >>> for step in range(3):
    ...     memory.push(build_segments(emb, torch.tensor([[0, 1, 2]])))
    >>> len(memory), memory.bank().num_prototypes, memory.bank().image_ids.tolist()
    (2, 6, [-2, -2, -2, -3, -3, -3])
    """

    def __init__(self, size, *, affinity_threshold=0.95, keep_affinity=True):
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be a non-negative int (batches kept), got {size!r}")
        self.size = size
        self.affinity_threshold = float(affinity_threshold)
        self.keep_affinity = bool(keep_affinity)
        self._batches = []  # oldest first; each a dict of _FIELDS
        self._images_pushed = 0
        self._bank = None  # cached concatenation, rebuilt after a change

    def __len__(self):
        return len(self._batches)

    def push(self, segments, labels_per_segment=None, *, tags=None):
        """Store the detached prototypes and labels of one batch, dropping the oldest batch.

        Parameters
        ----------
        segments : clustering.Segments
            The batch's segments (``segment_ids`` (B, ...), image ids 0 .. B-1).
        labels_per_segment : (S,) int tensor, optional
            Feature-affinity label of each segment; default `relations.affinity_labels` with
            this memory's `affinity_threshold` (none without ``keep_affinity``).
        tags : (B, C) bool tensor, optional
            Image tags; default ``segments.tags`` (may be None: then the bank has no tags).

        Raises
        ------
        ValueError
            If `labels_per_segment` or `tags` have the wrong shape, or the tag width differs
            from the stored batches'.
        """
        # a global batch joined from several processes counts all of its images
        num_images = segments.num_images or segments.segment_ids.shape[0]
        first = self._images_pushed
        self._images_pushed += num_images
        if self.size == 0:
            return
        num_segments = segments.num_segments
        if tags is not None:
            if tags.ndim != 2 or tags.shape[0] != num_images:
                raise ValueError(
                    f"tags must be (B, C) with B={num_images}, got {tuple(tags.shape)}"
                )
            segment_tags = tags.bool()[segments.image_ids]
        else:
            segment_tags = segments.tags
        widths = {b["tags"].shape[1] for b in self._batches if b["tags"] is not None}
        if segment_tags is not None and widths and widths != {segment_tags.shape[1]}:
            raise ValueError(
                f"tags have {segment_tags.shape[1]} classes, the memory holds {widths.pop()}"
            )
        if labels_per_segment is None and self.keep_affinity:
            labels_per_segment = affinity_labels(segments, threshold=self.affinity_threshold)
        if labels_per_segment is not None and tuple(labels_per_segment.shape) != (num_segments,):
            raise ValueError(
                f"labels_per_segment must have shape ({num_segments},), "
                f"got {tuple(labels_per_segment.shape)}"
            )
        batch = {
            # clone: a later in-place change of the batch's tensors must not reach the memory
            "prototypes": segments.prototypes.detach().clone(),
            "labels": segments.labels.detach().long().clone(),
            "tags": None if segment_tags is None else segment_tags.detach().bool().clone(),
            "image_ids": -1 - (first + segments.image_ids.detach().long()),
            "affinity_labels": None
            if labels_per_segment is None
            else labels_per_segment.detach().long().clone(),
        }
        self._batches = (self._batches + [batch])[-self.size :]
        self._bank = None

    def bank(self):
        """Return all stored batches as one `MemoryBank`, oldest first (None when empty).

        Returns
        -------
        bank : MemoryBank or None
        """
        if not self._batches:
            return None
        if self._bank is None:
            fields = {}
            for name in _FIELDS:  # tags and affinity labels: None unless every batch has them
                values = [b[name] for b in self._batches]
                fields[name] = None if any(v is None for v in values) else torch.cat(values)
            self._bank = MemoryBank(**fields)
        return self._bank

    def state_dict(self):
        """Return the memory as plain tensors and numbers (for ``torch.save``).

        Returns
        -------
        state : dict
            Loadable with ``torch.load(..., weights_only=True)``.
        """
        return {
            "size": self.size,
            "affinity_threshold": self.affinity_threshold,
            "images_pushed": self._images_pushed,
            "batches": [dict(batch) for batch in self._batches],
        }

    def load_state_dict(self, state):
        """Restore a memory saved by `state_dict`: the same batches, ids and id counter.

        Parameters
        ----------
        state : dict
            From `state_dict`. If it holds more batches than this memory's `size`, the newest
            `size` are kept; `size` and `affinity_threshold` stay this memory's own.

        Raises
        ------
        ValueError
            If `state` lacks a key or a batch lacks a field.
        """
        missing = {"images_pushed", "batches"} - set(state)
        if missing:
            raise ValueError(f"memory state lacks {sorted(missing)}")
        for batch in state["batches"]:
            if set(batch) != set(_FIELDS):
                raise ValueError(f"memory batch must have fields {_FIELDS}, got {sorted(batch)}")
        batches = [dict(batch) for batch in state["batches"]]
        self._batches = batches[-self.size :] if self.size else []
        self._images_pushed = int(state["images_pushed"])
        self._bank = None
