"""What the accuracy and calibration benchmarks share: datasets, one scored run, a worker pool.

Every run lives in its own folder and is resumable at three points: a killed training run
resumes from its checkpoint, a finished one (``final.pt``) is not trained again, and a split
whose ``eval*/metrics.json`` exists is not scored again. So a benchmark interrupted at any
point, in this session or the next, continues where it stopped and loses at most the steps
since the last checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from spml_lab.data import make_data
from spml_lab.method import label_maps
from spml_lab.prediction import evaluate, predict, stage2
from spml_lab.training import presets, runs, train
from spml_lab.training.config import TrainConfig

__all__ = ["ensure_dataset", "score_run", "run_all", "BASELINE", "read_csv", "write_csv"]

# partial cross-entropy (and full supervision): every relation off, the head trains the net;
# the head's dropout is left to the caller (calibrate.py's settings choose their own)
BASELINE = {k: v for k, v in presets.PARTIAL_CROSS_ENTROPY.items() if k != "head_dropout"}


def ensure_dataset(root, kind, splits, seed, options=None, superpixel_options=None, size=128):
    """Write a synthetic dataset, or reuse the one at `root` when everything about it matches.

    Parameters
    ----------
    root : Path
    kind : {"objects", "parts"}
    splits : dict of str to int
        Images of ``train``, ``val`` and (optionally) ``test``.
    seed : int
    options : dict, optional
        Generator options (`synthetic.generate`), e.g. ``difficulty``.
    superpixel_options : dict, optional
        `superpixels.segment` options, e.g. ``{"n_segments": 24}``.
    size : int, optional
        Image side in pixels.

    Returns
    -------
    root : Path

    Raises
    ------
    ValueError
        If `root` holds a dataset made with other settings (never silently reused).
    """
    root = Path(root)
    options, superpixel_options = dict(options or {}), dict(superpixel_options or {})
    meta_path = root / "dataset.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        same = (
            meta["kind"] == kind
            and meta["seed"] == seed
            and meta["splits"] == splits
            and meta["size"] == size
            and all(meta["options"].get(k) == v for k, v in options.items())
            and meta.get("superpixel_options", {}) == superpixel_options
        )
        if same:
            return root
        raise ValueError(
            f"{root} holds another dataset ({meta['kind']}, seed {meta['seed']}, splits "
            f"{meta['splits']}, options {meta['options']}, superpixels "
            f"{meta.get('superpixel_options')}); pass another --work folder"
        )
    print(f"writing {kind} data {splits} {options} {superpixel_options} -> {root}", flush=True)
    return make_data.write_dataset(
        root,
        kind=kind,
        num_train=splits["train"],
        num_val=splits["val"],
        num_test=splits.get("test", 0),
        size=size,
        seed=seed,
        superpixel_options=superpixel_options,
        overwrite=True,
        progress=False,
        **options,
    )


def score_run(cfg, splits, methods, *, stage2_steps=0, stage2_lr=0.1):
    """Train (or resume) one run, optionally its stage-2 head, and score it on `splits`.

    Parameters
    ----------
    cfg : TrainConfig
        The run; ``out_dir`` is its folder.
    splits : sequence of str
        Splits to score (``"val"`` for tuning, ``"test"`` for reporting).
    methods : sequence of str
        `evaluate.METHODS` to score; ``stage2*`` ones need `stage2_steps`.
    stage2_steps : int, optional
        Steps of the stage-2 head (`stage2.fit_head`); 0 = no stage 2.
    stage2_lr : float, optional

    Returns
    -------
    result : dict
        ``{"scores": {split: eval metrics}, "timing": {...}, "config": cfg dict}``.
    """
    run_dir = Path(cfg.out_dir)
    timing_path = run_dir / "bench_timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}

    def note(key, seconds):
        timing[key] = round(timing.get(key, 0.0) + seconds, 1)
        timing_path.write_text(json.dumps(timing) + "\n")

    if not (run_dir / runs.FINAL).is_file():
        tic = time.perf_counter()
        resume = (run_dir / "checkpoint.pt").is_file()
        if not resume:  # killed before its first checkpoint: its config and rows are all it left
            for partial in ("config.yaml", "metrics.csv"):
                if (run_dir / partial).is_file():
                    print(f"{run_dir}: no checkpoint yet, starting afresh over its {partial}")
                    (run_dir / partial).unlink()
        train.fit(cfg.replace(resume=resume))
        note("train_seconds", time.perf_counter() - tic)
    if stage2_steps and not (run_dir / runs.STAGE2).is_file():
        tic = time.perf_counter()
        stage2.fit_head(run_dir, steps=stage2_steps, lr=stage2_lr, seed=cfg.seed, device=cfg.device)
        note("stage2_seconds", time.perf_counter() - tic)
    scores = {}
    for split in splits:
        path = run_dir / evaluate.eval_dir(split) / "metrics.json"
        if not path.is_file():
            tic = time.perf_counter()
            evaluate.evaluate_run(run_dir, split=split, methods=methods, device=cfg.device)
            note(f"eval_{split}_seconds", time.perf_counter() - tic)
        scores[split] = json.loads(path.read_text())
    return {"scores": scores, "timing": timing, "config": cfg.to_dict()}


def _one_thread():
    import torch

    torch.set_num_threads(1)
    _die_with_parent()


def _die_with_parent():
    """Ask Linux to end this worker when the benchmark process dies (kill, Ctrl-C).

    Otherwise a killed benchmark leaves its workers training on; whatever they were doing
    resumes from its checkpoint the next time, so nothing is lost by ending them.
    """
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _call(job):
    function, args, kwargs = job
    return function(*args, **kwargs)


def run_all(jobs, workers=1):
    """Run ``(function, args, kwargs)`` jobs, `workers` processes of one thread each.

    Small networks on a CPU scale badly across threads, so two single-thread runs side by
    side on two cores finish about twice as fast as one two-thread run after another.
    Results come back in the order of `jobs` (a generator: write each as it arrives).
    """
    if workers <= 1:
        for job in jobs:
            yield _call(job)
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    context = get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        yield from pool.map(_call, jobs)


def base_config(**changes):
    """Return a benchmark run's TrainConfig: no progress bar, ten log rows, four checkpoints.

    The benchmark's small datasets are decoded once and kept in memory (``cache_data``): the
    same batches, a tenth less time per step.
    """
    steps = changes.get("max_steps", TrainConfig().max_steps)
    defaults = {
        "progress": False,
        "cache_data": True,
        "log_every": max(1, steps // 10),
        "checkpoint_every": max(1, steps // 4),
    }
    return TrainConfig(**{**defaults, **changes})


def segment_report(run_dir, batches=4, device="cpu"):
    """Segment statistics of a trained run, measured as its training steps build them.

    Draws `batches` augmented training batches, embeds them with the run's final network and
    segments them exactly as `train.batch_losses` does (k-means on ``[v, location]``, split by
    superpixel and weak label), at the embedding resolution.

    Returns
    -------
    stats : dict of str to float
        `clustering.segment_statistics` averaged over the batches.
    """
    import torch

    from spml_lab.method import clustering

    run = runs.load_run(run_dir, device=device)
    net, cfg = run.net, run.cfg
    dataset = train.build_dataset(cfg)
    if not dataset.has_superpixels:
        return {}
    generator = torch.Generator().manual_seed(0)
    totals = {}
    with torch.no_grad():
        for _ in range(batches):
            pick = torch.randperm(len(dataset), generator=generator)[: cfg.batch_size].tolist()
            items = [dataset[i] for i in pick]
            images = torch.stack([it["image"] for it in items]).to(device)
            emb = net(images).permute(0, 2, 3, 1)  # (B, h, w, D), as a training step has it
            maps = {key: torch.stack([it[key] for it in items]) for key in ("label", "superpixel")}
            labels, sp, valid = label_maps.step_maps(maps, emb.shape[1:3], device=device)
            segments = clustering.segment_batch(
                emb, sp, labels, cfg.kmeans_grid, cfg.kmeans_iterations, valid=valid
            )
            for key, value in clustering.segment_statistics(segments, sp, valid).items():
                totals[key] = totals.get(key, 0.0) + value / batches
    return {key: round(value, 2) for key, value in totals.items()}


def probe_report(run_dir, split="test", images=32, device="cpu"):
    """Linear probes of a run's embedding on a split: position R² and class balanced accuracy.

    Returns
    -------
    scores : dict of str to float
        `embedding_stats.probe_position_and_class` of the first `images` images of `split`.
    """
    import torch

    from spml_lab.nets import embedding_nets
    from spml_lab.pictures import embedding_stats

    run = runs.load_run(run_dir, device=device)
    truth = predict.dataset_for(run.cfg, split, "full")
    embeddings, labels = [], []
    with torch.no_grad():
        for batch in predict.image_batches(truth, 8, images):
            embeddings.append(embedding_nets.embed(run.net, batch["image"]).cpu())
            labels.append(batch["label"])
    scores = embedding_stats.probe_position_and_class(
        torch.cat(embeddings), torch.cat(labels), num_samples=3000
    )
    return {key: round(value, 3) for key, value in scores.items()}


def read_csv(path):
    """Rows of a CSV file as dicts of strings; [] when it does not exist yet."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open() as handle:
        return list(csv.DictReader(handle))


def write_csv(path, rows):
    """Write dict rows (columns: the union of their keys, in order of appearance)."""
    if not rows:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
