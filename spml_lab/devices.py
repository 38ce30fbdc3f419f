"""Where the tensors go: one default, ``"auto"``, and the one function that resolves it.

Every command (``spml-lab train``, ``evaluate``, ``stage2``, ``predict``, ``cam-labels``) and every
library entry point that takes a ``device`` defaults to `DEFAULT` and hands it to
`resolve_device`, so "auto" means the same thing everywhere: the GPU when torch sees one, else
the CPU. A machine without CUDA therefore runs the same command line as one with it.

This module sits in the package's lowest layer (it imports torch only), so the method, training
and prediction layers share it without importing each other.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["DEFAULT", "HELP", "check_device", "resolve_device", "torch_threads"]

DEFAULT = "auto"
# the help text of every --device flag and device field
HELP = "'auto' (CUDA when present, else the CPU), 'cpu', 'cuda', 'cuda:1', ..."


def check_device(name, *, argument="device"):
    """Return `name` when it spells ``"auto"`` or a torch device; else raise naming `argument`.

    Only the spelling is checked, not whether this machine has the device: a config written
    on a laptop may name the GPU it will run on.

    Parameters
    ----------
    name : str or torch.device
    argument : str, optional
        What the value is called where the user wrote it (``"--device"``,
        ``"TrainConfig.device"``), for the error message.

    Returns
    -------
    name : str

    Raises
    ------
    ValueError
        ``"{argument} must be 'auto' or a torch device such as 'cpu' or 'cuda:0', got ..."``.

    Examples
    --------
    >>> check_device("cuda:1")
    'cuda:1'
    >>> check_device("gpu", argument="--device")
    Traceback (most recent call last):
    ...
    ValueError: --device must be 'auto' or a torch device such as 'cpu' or 'cuda:0', got 'gpu'
    """
    text = str(name) if isinstance(name, torch.device) else name
    if text == DEFAULT:
        return text
    try:
        torch.device(text)
    except (RuntimeError, TypeError):  # torch: "Expected one of cpu, cuda, ... device type"
        raise ValueError(
            f"{argument} must be {DEFAULT!r} or a torch device such as 'cpu' or 'cuda:0', "
            f"got {name!r}"
        ) from None
    return text


def resolve_device(name=DEFAULT, *, argument="device"):
    """Turn ``"auto"`` into CUDA when present, else the CPU; check that a named device exists.

    Parameters
    ----------
    name : str or torch.device, optional
        ``"auto"`` (`DEFAULT`), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    argument : str, optional
        What the value is called where the user wrote it, for the error message.

    Returns
    -------
    device : torch.device

    Raises
    ------
    ValueError
        Naming `argument`: a value that is no device, or a CUDA device this machine lacks.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    True
    """
    text = check_device(name, argument=argument)
    if text == DEFAULT:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{argument} is {text!r} but CUDA is not available; use 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"{argument} is {text!r} but this machine has {torch.cuda.device_count()} "
                "CUDA device(s)"
            )
    return device


@contextlib.contextmanager
def torch_threads(count):
    """Run the block (or the decorated function) on `count` torch threads, then restore.

    Results of CPU kernels depend on the thread count (the order of their sums), so work
    whose numbers must repeat on any machine pins it; the caller's count comes back even when
    the block raises.

    Parameters
    ----------
    count : int

    Examples
    --------
    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
