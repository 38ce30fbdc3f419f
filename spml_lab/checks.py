"""Range checks of numbers given by a user: one message for a flag, an argument or a field.

Every command checks its numeric flags with `flag` (argparse reports ``argument --max-side:
must be >= 0, got -5`` before anything runs), and the library functions behind them check the
same numbers with `in_range`, so a notebook or a script that calls them directly gets the same
refusal, naming the argument, before anything is written.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["in_range", "flag"]


def in_range(name, value, minimum=None, maximum=None, *, kind=int):
    """Return `value` when it is a `kind` in ``[minimum, maximum]``; else raise naming `name`.

    Parameters
    ----------
    name : str
        What the value is, as the user wrote it (``"--superpixels"``, ``"num_train"``).
    value : int or float
    minimum, maximum : int or float, optional
        Inclusive bounds; None = unbounded.
    kind : {int, float}, optional
        Integers are refused as floats and vice versa (``True`` is no integer); floats must
        be finite.

    Returns
    -------
    value : int or float

    Raises
    ------
    ValueError
        ``"{name} must be >= {minimum}, got {value!r}"`` and the like.

    Examples
    --------
    >>> in_range("--steps", 3, 1)
    3
    >>> in_range("--steps", 0, 1)
    Traceback (most recent call last):
    ...
    ValueError: --steps must be >= 1, got 0
    >>> in_range("difficulty", 1.5, 0, 1, kind=float)
    Traceback (most recent call last):
    ...
    ValueError: difficulty must be in [0, 1], got 1.5
    """
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        what = "an integer"
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        what = "a finite number"
    if ok and minimum is not None and maximum is not None:
        ok, what = minimum <= value <= maximum, f"in [{minimum}, {maximum}]"
    elif ok and minimum is not None:
        ok, what = value >= minimum, f">= {minimum}"
    elif ok and maximum is not None:
        ok, what = value <= maximum, f"<= {maximum}"
    if not ok:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def flag(kind=int, minimum=None, maximum=None):
    """Return an argparse ``type=`` that parses a `kind` and checks it with `in_range`.

    Examples
    --------
    >>> parser = argparse.ArgumentParser(prog="spml-lab predict", exit_on_error=False)
    >>> _ = parser.add_argument("--max-side", type=flag(int, 0), default=1024)
    >>> parser.parse_args(["--max-side", "512"]).max_side
    512
    >>> parser.parse_args(["--max-side", "-5"])
    Traceback (most recent call last):
    ...
    argparse.ArgumentError: argument --max-side: must be >= 0, got -5
    """

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind.__name__}, got {text!r}") from None
        try:
            return in_range("", value, minimum, maximum, kind=kind)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).strip()) from None

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value" messages
    return parse
