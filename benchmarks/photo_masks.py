"""The README's photos: the stored strokes of the bundled photos, segmented by each method.

Photos have no ground truth, so nothing here is scored: the figure puts SPML's, the forest's
and partial cross-entropy's masks side by side, to be judged by eye (the scored comparison is
``benchmarks/one_image.py``, on generated scenes with exact masks). The photos are
scikit-image's, at 256 px on the longer side, with the strokes stored in
``spml_lab/data_samples/scribbles/strokes.json``; every method gets the recipe's defaults
(`one_image.RECIPE`: 60 steps for the networks) and seed 0, as ``spml-lab segment`` would.

    python benchmarks/photo_masks.py    # docs/figures/photo_masks.png; about a minute, 2 cores
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import torch

from spml_lab.classroom import photos
from spml_lab.pictures import viz
from spml_lab.prediction import one_image

OUT = Path(__file__).resolve().parent.parent / "docs" / "figures" / "photo_masks.png"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--steps", type=int, default=one_image.RECIPE.steps)
    args = parser.parse_args(argv)
    matplotlib.use("Agg")
    torch.set_num_threads(1)  # the masks of `spml-lab segment` and the benchmarks
    stored = photos.stored()
    rows, names = {}, [entry["classes"] for entry in stored.values()]
    for name in stored:
        image = photos.photo(name)
        strokes = photos.stored_scribbles(name, image.shape[:2])
        colours = viz.palette(len(stored[name]["classes"]))
        row = [viz.overlay(image, strokes, colours, alpha=1.0, dim=0.3)]
        for method in one_image.METHODS:
            tic = time.perf_counter()
            mask = one_image.segment(image, strokes, method, steps=args.steps, seed=0)
            print(f"{name:10s} {method:10s} {time.perf_counter() - tic:5.1f} s")
            row.append(viz.overlay(image, mask, colours, alpha=0.5))
        rows[name] = row
    fig = viz.show_grid(rows, col_titles=["strokes", *one_image.METHODS], size=2.4)
    # one colour per class id: name each id by what it is in every photo
    labels = [" / ".join(dict.fromkeys(n[i] for n in names)) for i in range(len(names[0]))]
    fig.legend(handles=viz.legend_handles(labels, viz.palette(len(labels))), loc="lower center",
               ncol=len(labels), fontsize=9, frameon=False)  # fmt: skip
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=72)
    plt.close(fig)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
