"""Scribble on a photo and watch it segmented: the brush, the background training, the figure.

The parts of the scribble widget (`scribble_widget.ScribbleWidget`) that need no browser:

* `paint`: one brush movement into a label map, as a round brush of a given radius paints it;
* `Training`: `one_image.segment` run in a background thread, first the forest, then SPML,
  reporting every mask as it comes (SPML's progress masks through `segment`'s callback), so a
  notebook's widgets stay responsive while it trains and a new Train press stops the old run;
* `masks_figure`: the photo with its scribbles beside the masks of each method, as a
  matplotlib figure (what a headless run shows instead of the widget).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from spml_lab.constants import IGNORE_INDEX
from spml_lab.pictures import viz
from spml_lab.prediction import one_image

__all__ = ["ORDER", "THREADS", "Training", "masks_figure", "paint", "warm_up"]

# The forest first: it is ready in a second or two, so there is something to look at while
# SPML trains (sequential, not side by side: on two cores, two threads of work plus torch's own
# threads would only slow both down)
ORDER = ("forest", "spml")
# Torch threads of a training thread. One: the masks are then those of `spml-lab segment` and
# the benchmarks (one thread each), and the second core stays free for the kernel and the
# browser. Two threads on two cores that other work also uses spin and wait: the widget's
# Train on astronaut at 256 px took 79 s instead of 13 s (one_image_speed.csv, load about 5).
THREADS = 1

_WARM = {"thread": None}  # the one warm-up thread of this process (`warm_up`)
_WARM_LOCK = threading.Lock()


def warm_up():
    """Run the forest and SPML once on a tiny picture in the background, once per process.

    The first `one_image.segment` of a process pays one-off costs (torch imports its compiler
    when the first optimizer is made, scikit-learn and the CRF load): about 3 CPU seconds,
    which would otherwise delay the first Train press. A widget starts this when it is made,
    while its user paints; `Training` runs wait for it, so runs never overlap.

    Returns
    -------
    thread : threading.Thread
        The warm-up thread (already finished when called again).
    """
    with _WARM_LOCK:
        if _WARM["thread"] is None:
            image = np.zeros((24, 24, 3), np.uint8)
            image[:, 12:] = 255
            scribbles = np.full((24, 24), IGNORE_INDEX, np.uint8)
            scribbles[4:20, 3:6], scribbles[4:20, 18:21] = 0, 1

            def run():
                torch.set_num_threads(THREADS)
                for method in ORDER:
                    one_image.segment(image, scribbles, method, steps=1)

            _WARM["thread"] = threading.Thread(target=run, daemon=True)
            _WARM["thread"].start()
        return _WARM["thread"]


def paint(labels, start, end, radius, value):
    """Paint one brush movement into a label map, in place.

    Every pixel whose centre lies within `radius` of the segment from `start` to `end` takes
    `value`: a round brush dragged along the segment. Only the segment's bounding box is
    computed, so a mouse movement costs microseconds whatever the picture's size.

    Parameters
    ----------
    labels : (H, W) uint8 ndarray
        Changed in place.
    start, end : (float, float)
        ``(x, y)`` brush positions in pixels (column, row: a canvas's mouse coordinates); equal
        for a single dab.
    radius : float
        Brush radius in pixels; 0 paints the pixels the segment passes through.
    value : int
        Class id, or 255 (`IGNORE_INDEX`) to erase.

    Returns
    -------
    box : tuple of slice or None
        ``(rows, cols)`` of the pixels that may have changed, None when the brush lies wholly
        outside the picture.

    Examples
    --------
    >>> labels = np.full((5, 7), 255, np.uint8)
    >>> paint(labels, (1, 2), (5, 2), 0, 1)
    (slice(2, 3, None), slice(1, 6, None))
    >>> labels[2].tolist()
    [255, 1, 1, 1, 1, 1, 255]
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if not 0 <= value <= IGNORE_INDEX:
        raise ValueError(f"value must be a class id 0..254 or 255 (erase), got {value}")
    height, width = labels.shape
    (x0, y0), (x1, y1) = (np.asarray(p, np.float64) for p in (start, end))
    # radius 0 must still mark the pixels the segment crosses: half a pixel
    reach = max(radius, 0.5) + 1e-9  # (the tolerance keeps exact distances inside)
    top = max(int(np.ceil(min(y0, y1) - reach)), 0)  # pixel centres are at whole numbers
    bottom = min(int(np.floor(max(y0, y1) + reach)) + 1, height)
    left = max(int(np.ceil(min(x0, x1) - reach)), 0)
    right = min(int(np.floor(max(x0, x1) + reach)) + 1, width)
    if top >= bottom or left >= right:
        return None
    rows = np.arange(top, bottom, dtype=np.float64)[:, None]  # (h, 1)
    cols = np.arange(left, right, dtype=np.float64)[None, :]  # (1, w)
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    # nearest point of the segment to each pixel, as a fraction t of the way from start to end
    t = 0.0 if length2 == 0 else np.clip(((cols - x0) * dx + (rows - y0) * dy) / length2, 0, 1)
    dist2 = (cols - (x0 + t * dx)) ** 2 + (rows - (y0 + t * dy)) ** 2  # (h, w)
    inside = dist2 <= reach**2
    box = (slice(top, bottom), slice(left, right))
    labels[box][inside] = value
    return box


class _Stopped(Exception):
    """Raised inside `segment`'s callback to end a run that a newer one replaces."""


class Training:
    """Segment one image in a background thread and report each mask as it comes.

    `start` runs the forest, then SPML (`ORDER`), with `one_image.segment`; SPML reports a
    progress mask every ``one_image.RECIPE.update_every`` steps through its callback. A new
    `start` or a `stop` ends the running run at its next report (the forest cannot be cut
    short: about a second at 256 px), and nothing it computes is reported after that. A run
    starts training only once the run before it (and `warm_up`) has ended: runs never overlap,
    so each one's masks are those `one_image.segment` gives alone (its seed draws torch's
    global random numbers, which an overlapping run would also draw from).

    Parameters
    ----------
    on_mask : callable
        ``on_mask(method, step, mask)``, from the training thread: ``method`` in `ORDER`,
        ``step`` the training step (1 for the forest), ``mask`` (H, W) uint8 class ids.
    on_status : callable, optional
        ``on_status(text)`` with a line of progress, or the error that ended a run.
    steps : int, optional
        SPML's training steps (default ``one_image.RECIPE.steps``).
    seed : int, optional
        As in `one_image.segment`: same scribbles and seed, same masks.
    methods : tuple of str, optional
        Which of `ORDER` to run, in that order.
    threads : int, optional
        Torch threads of the training thread (`THREADS`: why one).

    Attributes
    ----------
    times : dict
        ``(method, step) -> seconds`` from `start` to each reported mask of the latest run.
    error : Exception or None
        What ended the latest run early (bad scribbles, a failure), else None.

    Examples
    --------
    >>> image = np.zeros((32, 32, 3), np.uint8); image[:, 16:] = 255
    >>> scribbles = np.full((32, 32), 255, np.uint8)
    >>> scribbles[4:28, 4:8], scribbles[4:28, 24:28] = 0, 1
    >>> masks = {}
    >>> run = Training(lambda method, step, mask: masks.update({method: mask}),
    ...                methods=("forest",))
    >>> run.start(image, scribbles); run.join(); sorted(masks), run.error
    (['forest'], None)
    """

    def __init__(
        self, on_mask, on_status=None, *, steps=None, seed=0, methods=ORDER, threads=THREADS
    ):
        unknown = sorted(set(methods) - set(ORDER))
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; choose from {ORDER}")
        self.on_mask, self.on_status = on_mask, on_status or (lambda text: None)
        self.steps = one_image.RECIPE.steps if steps is None else steps
        self.seed, self.methods = seed, tuple(m for m in ORDER if m in methods)
        self.threads = threads
        self.times, self.error = {}, None
        self._lock = threading.Lock()  # a stopped run reports nothing once `start` returns
        self._stop = threading.Event()
        self._thread = None

    @property
    def running(self):
        """Whether a run is in progress (one that was asked to stop may still be ending)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, image, scribbles, *, num_classes=None):
        """Stop the running run, if any, and train on these scribbles in a new thread.

        Parameters
        ----------
        image : (H, W, 3) uint8 ndarray
        scribbles : (H, W) uint8 ndarray
            Copied: painting on after `start` does not change this run.
        num_classes : int, optional
            As in `one_image.segment` (classes without a scribble are never predicted).
        """
        self.stop()
        stop = threading.Event()
        with self._lock:
            self._stop = stop
            self.times, self.error = {}, None
        args = (np.array(image), np.array(scribbles), num_classes, stop, time.perf_counter())
        args += (self._thread,)  # the run before, which this one waits for
        self._thread = threading.Thread(target=self._run, args=args, daemon=True)
        self._thread.start()

    def stop(self):
        """Ask the running run to stop; return at once (it ends at its next report)."""
        with self._lock:
            self._stop.set()

    def join(self, timeout=None):
        """Wait for the latest run to end (a test's or benchmark's call; the widget never waits)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _report(self, stop, tic, method, step, mask):
        with self._lock:  # the check and the report are one step: `stop` cannot fall between
            if stop.is_set():
                raise _Stopped
            self.times[(method, step)] = time.perf_counter() - tic
            self.on_mask(method, step, mask)

    def _status(self, stop, text):
        with self._lock:
            if not stop.is_set():
                self.on_status(text)

    def _run(self, image, scribbles, num_classes, stop, tic, previous):
        for other in (previous, _WARM["thread"]):
            if other is not None:
                other.join()  # ends at its next report: a second or two
        torch.set_num_threads(self.threads)  # set here, the kernel's main thread keeps its own
        try:
            for method in self.methods:
                self._status(stop, f"training {method}...")

                def report(step, mask, method=method):
                    self._report(stop, tic, method, step, mask)

                one_image.segment(
                    image, scribbles, method, steps=self.steps, seed=self.seed,
                    callback=report, num_classes=num_classes,
                )  # fmt: skip
            done = ", ".join(
                f"{m} {self.times[(m, self._last_step(m))]:.1f} s" for m in self.methods
            )
            self._status(stop, f"done ({done} after Train)")
        except _Stopped:
            pass
        except Exception as error:  # a thread's error is lost unless shown: show every one
            self.error = error
            self._status(stop, f"{type(error).__name__}: {error}")

    def _last_step(self, method):
        return 1 if method == "forest" else self.steps


def masks_figure(image, scribbles, masks, class_names, *, title=None, size=2.6):
    """Draw the photo with its scribbles beside each method's mask (one row).

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray
    scribbles : (H, W) int ndarray
        Class ids 0..K-1, 255 = unlabelled.
    masks : dict of str to (H, W) int ndarray
        Method name -> mask, drawn left to right in this order (None: the plain photo, titled
        "not trained").
    class_names : list of str
        K names, for the legend.
    title : str, optional
    size : float, optional
        Side of one cell in inches.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    colours = viz.palette(len(class_names))
    pictures = {"scribbles": viz.overlay(image, scribbles, colours, alpha=1.0, dim=0.3)}
    for method, mask in masks.items():
        if mask is None:
            pictures[f"{method} (not trained)"] = image
        else:
            pictures[method] = viz.overlay(image, mask, colours, alpha=0.5)
    fig = viz.show_grid([list(pictures.values())], col_titles=list(pictures), size=size)
    # the legend on as few lines as the row is wide (show_grid's own has five names a line,
    # which a single row of pictures has no room for)
    per_line = max(1, min(len(class_names), 2 * len(pictures)))
    lines = -(-len(class_names) // per_line)
    fig.legend(
        handles=viz.legend_handles(class_names, colours), loc="lower center", ncol=per_line,
        fontsize=8, frameon=False,
    )  # fmt: skip
    inches = 0.3 / size  # a line of text, as a fraction of the figure's height
    fig.tight_layout(rect=(0, min(0.5, lines * inches), 1, 1 - 1.2 * inches if title else 1))
    if title:
        fig.suptitle(title, y=1 - 0.2 * inches, va="top", fontsize=11)
    return fig
