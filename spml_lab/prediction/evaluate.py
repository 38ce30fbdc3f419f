"""From a trained run to masks and scores: load a run, predict, evaluate every method.

SPML predicts in three ways from one trained embedding (stage 1, `spml_lab.training.train`,
loaded by `spml_lab.training.runs.load_run`):

* ``knn``: segment the test image by k-means and label each segment by its k nearest
  prototypes of the *training* images, built from their weak labels (`build_bank`).
* ``softmax``: the stage-1 softmax head on the unit embeddings, upsampled and averaged over
  the image and its mirror image; ``softmax_crf`` refines it with a dense CRF
  (`spml_lab.prediction.crf`).
* ``stage2`` / ``stage2_crf``: the same with the head retrained on pseudo labels
  (`spml_lab.prediction.stage2`, RUN_DIR/stage2.pt). ``stage2_crf`` is the paper's final prediction.

`evaluate_run` scores them on a split's dense ground truth (the "full" annotation list of the
run's data) and writes, beside the run's other files::

    eval/metrics.json   {method: {miou, pixel_accuracy, per_class_iou}, split, images, config}
    eval/per_class.csv  class, one IoU column per method

Images are read and scored batch by batch; only the confusion matrices are kept.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from spml_lab import checks, devices
from spml_lab.data import writers
from spml_lab.prediction import metrics
from spml_lab.prediction.crf import dense_crf_batch
from spml_lab.prediction.predict import (
    build_bank,
    dataset_for,
    image_batches,
    knn_settings,
    predict,
    predict_softmax,
    to_uint8,
)
from spml_lab.training.config import option
from spml_lab.training.runs import EVAL_DIR, STAGE2, load_run

__all__ = ["METHODS", "EvaluateOptions", "evaluate_run", "eval_dir", "predict_methods"]

METHODS = ("knn", "softmax", "softmax_crf", "stage2", "stage2_crf")


@dataclass(frozen=True)
class EvaluateOptions:
    """What `evaluate_run` scores: its defaults, and the flags of `spml-lab evaluate`."""

    split: str = option("val", "split to score; its 'full' list is the ground truth")
    methods: tuple | None = option(
        None,
        "methods to score (default: knn softmax softmax_crf, + stage2_crf when "
        "RUN_DIR/stage2.pt exists)",
        choices=METHODS,
        kind=str,
        nargs="+",
    )
    max_images: int | None = option(None, "score only the first N images", kind=int)
    batch_size: int = option(8, "images per forward pass (also for the kNN bank)")
    device: str = option(devices.DEFAULT, devices.HELP)
    progress: bool = option(False, "show a progress bar")


# ---------------------------------------------------------------------- evaluation


def _default_methods(run):
    return ("knn", "softmax", "softmax_crf") + (("stage2_crf",) if run.stage2_head else ())


def _check_methods(methods, run):
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be some of {list(METHODS)}, got {list(methods)}")
    if run.stage2_head is None and any(m.startswith("stage2") for m in methods):
        raise FileNotFoundError(
            f"{run.path / STAGE2} not found: train the stage-2 head first "
            f"(spml-lab stage2 {run.path})"
        )


def predict_methods(run, images, methods, *, bank=None, knn_options=None, crf_options=None):
    """Label one batch with several `METHODS` at once; the softmax maps serve their +CRF too.

    Parameters
    ----------
    run : runs.Run
    images : (B, 3, H, W) float tensor in [0, 1]
    methods : sequence of str
        Some of `METHODS` (``stage2*`` need ``run.stage2_head``, ``knn`` a `bank`).
    bank : knn.PrototypeBank, optional
    knn_options, crf_options : dict, optional
        As `evaluate_run` (default kNN settings: `knn_settings`; CRF: the paper's).

    Returns
    -------
    labels : dict of str to (B, H, W) int64 tensor
        On the CPU, one entry per method.
    """
    _check_methods(methods, run)
    if "knn" in methods and bank is None:
        raise ValueError("method 'knn' needs bank= (predict.build_bank(run))")
    knn_options = knn_settings(run.cfg, knn_options)
    crf_options = dict(crf_options or {})
    out = {}
    for name, head in (("softmax", run.head), ("stage2", run.stage2_head)):
        wanted = [m for m in methods if m in (name, name + "_crf")]
        if not wanted:
            continue
        probs = predict_softmax(run.net, head, images).cpu()
        if name in wanted:
            out[name] = probs.argmax(dim=1)
        if name + "_crf" in wanted:
            refined = dense_crf_batch(to_uint8(images), probs, **crf_options)
            out[name + "_crf"] = refined.argmax(dim=1)
    if "knn" in methods:
        out["knn"] = predict(
            run.net, run.head, images, method="knn", bank=bank, knn_options=knn_options
        )
    return out


def _scores(confusion, class_names):
    miou, iou = metrics.mean_iou(confusion)
    total = int(confusion.sum())
    return {
        "miou": miou,
        "pixel_accuracy": float(confusion.diagonal().sum()) / total if total else math.nan,
        # JSON has no NaN: a class absent from ground truth and prediction gets null
        "per_class_iou": {
            name: None if math.isnan(v) else v
            for name, v in zip(class_names, iou.tolist(), strict=True)
        },
    }


def evaluate_run(
    run_dir,
    *,
    split=EvaluateOptions.split,
    methods=EvaluateOptions.methods,
    max_images=EvaluateOptions.max_images,
    batch_size=EvaluateOptions.batch_size,
    device=EvaluateOptions.device,
    knn_options=None,
    crf_options=None,
    progress=EvaluateOptions.progress,
    out=None,
):
    """Score a run's predictions on a split's dense ground truth; write eval/ files.

    Parameters
    ----------
    run_dir : str or Path
        A finished run folder (`load_run`).
    split : str, optional
        Split to score; its ``"full"`` annotation list is the ground truth.
    methods : sequence of str, optional
        Some of `METHODS`. Default: ``knn``, ``softmax``, ``softmax_crf``, plus
        ``stage2_crf`` when RUN_DIR/stage2.pt exists.
    max_images : int, optional
        Score only the first images of the split (a quick look).
    batch_size : int, optional
        Images per forward pass (also for building the kNN bank).
    device : str, optional
        Where to run (`devices.resolve_device`); default ``"auto"``, CUDA when present.
    knn_options : dict, optional
        ``k`` (20), ``grid`` (twice the training grid), ``iterations`` (10).
    crf_options : dict, optional
        Keyword arguments of `crf.dense_crf` (default: the paper's VOC settings).
    progress : bool, optional
        Show a progress bar.
    out : str or Path, optional
        Folder the eval files go to instead of the run's own; needed for a shipped run,
        which is read-only (`writers.refuse_shipped`).

    Returns
    -------
    results : dict
        What metrics.json (in `scores_folder`) holds: one entry per method with ``miou``,
        ``pixel_accuracy``, ``per_class_iou`` (class name -> IoU, None for a class absent
        from both ground truth and prediction) and ``per_image_miou`` (each scored image's
        own mIoU, in split order), plus ``methods`` (their order), ``split``, ``images``,
        ``class_names``, ``seconds``, ``settings`` and ``config`` (a summary of the run).

    Raises
    ------
    FileNotFoundError
        If the run, its data or (for stage2 methods) its stage2.pt is missing.
    ValueError
        On an unknown method or a bad argument, or when the folder to write is shipped.
    FileExistsError
        When another process is writing the same run (`writers.one_writer`).

    Notes
    -----
    Writes RUN_DIR/eval/metrics.json and RUN_DIR/eval/per_class.csv (replacing earlier
    ones) for the val split, RUN_DIR/eval_{split}/ for any other (`eval_dir`), so a held-out
    test score never overwrites the val score that was tuned on. Only one batch of images
    and one confusion matrix per method are in memory.
    """
    tic = time.perf_counter()
    checks.in_range("batch_size", batch_size, 1)
    if max_images is not None:
        checks.in_range("max_images", max_images, 1)
    run = load_run(run_dir, device=device)
    folder = scores_folder(run.path, split, out)
    with writers.one_writer(folder.parent if out is None else folder):
        results = _evaluate(run, split, methods, max_images, batch_size, knn_options,
                            crf_options, progress, tic)  # fmt: skip
        _write(folder, results)
    return results


def _evaluate(run, split, methods, max_images, batch_size, knn_options, crf_options, progress,
              tic):  # fmt: skip
    methods = tuple(_default_methods(run) if methods is None else methods)
    _check_methods(methods, run)
    knn_options = knn_settings(run.cfg, knn_options)
    crf_options = dict(crf_options or {})
    truth = dataset_for(run.cfg, split, "full", run.data_fingerprint)
    num_classes = run.num_classes
    bank = None
    if "knn" in methods:
        bank = build_bank(run, batch_size=batch_size, knn_options=knn_options)
    confusion = {m: torch.zeros(num_classes, num_classes, dtype=torch.long) for m in methods}
    per_image = {m: [] for m in methods}
    count = len(truth) if max_images is None else min(max_images, len(truth))
    bar = tqdm(total=count, disable=not progress, desc="spml evaluate")
    for batch in image_batches(truth, batch_size, max_images):
        options = {"bank": bank, "knn_options": knn_options, "crf_options": crf_options}
        predictions = predict_methods(run, batch["image"], methods, **options)
        for name, labels in predictions.items():
            confusion[name] += metrics.confusion_matrix(labels, batch["label"], num_classes)
            per_image[name].append(metrics.image_miou(labels, batch["label"], num_classes))
        bar.update(len(batch["name"]))
    bar.close()
    names = run.class_names or [str(c) for c in range(num_classes)]
    results = {m: _scores(confusion[m], names) for m in methods}
    for m in methods:  # which images a method gets wrong (JSON has no NaN: null)
        values = torch.cat(per_image[m]).tolist()
        results[m]["per_image_miou"] = [None if math.isnan(v) else v for v in values]
    results.update(
        methods=list(methods),
        split=split,
        images=count,
        class_names=list(names),
        seconds=round(time.perf_counter() - tic, 3),
        settings={
            "flip": True,
            "knn": {**knn_options, "bank_size": len(bank)} if bank is not None else None,
            "crf": crf_options,
        },
        config={
            "run": str(run.path),
            "step": run.step,
            **{k: run.cfg.to_dict()[k] for k in ("data", "annotation", "split", "model")},
            "embedding_dim": run.cfg.embedding_dim,
            "relations": list(run.cfg.relation_settings()),
        },
    )
    return results


def eval_dir(split):
    """Folder name of a split's scores inside a run: ``eval`` for val, else ``eval_{split}``.

    Examples
    --------
    >>> eval_dir("val"), eval_dir("test")
    ('eval', 'eval_test')
    """
    return EVAL_DIR if split == "val" else f"{EVAL_DIR}_{split}"


def scores_folder(run_path, split, out=None):
    """Return the folder `evaluate_run` writes a split's scores to: `out`, else the run's own.

    Examples
    --------
    >>> scores_folder(Path("runs/a"), "test").as_posix(), scores_folder(Path("r"), "val", "x")
    ('runs/a/eval_test', PosixPath('x'))
    """
    return Path(out) if out is not None else Path(run_path) / eval_dir(split)


def _write(folder, results):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    methods = results["methods"]
    with open(folder / "per_class.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", *methods])
        for name in results["class_names"]:
            values = [results[m]["per_class_iou"][name] for m in methods]
            writer.writerow([name, *("" if v is None else f"{v:.6f}" for v in values)])
