"""The GPU check: everything a first CUDA machine should run, in one command, at most 8 minutes.

How to run (from the repository root, no install needed: only torch, numpy, scipy,
scikit-image, matplotlib, tqdm, pyyaml, pillow; Jupyter, papermill, pydensecrf2, umap and
pycocotools are optional)::

    benchmarks/gpu.sh                        # = PYTHONPATH=. python benchmarks/gpu.py
    benchmarks/gpu.sh --out results/h100     # another folder (default benchmarks/results/gpu)
    benchmarks/gpu.sh --dry-run              # the same code paths, tiny, on the CPU (~1 min)

It runs five steps, each in its own process with its own time limit (a crash or an
out-of-memory in one leaves the others running), and stops starting new ones at 8 minutes:

1. ``environment``: Python, torch, CUDA, the GPU's name and memory, bf16 support, which
   optional packages are importable, the git commit if there is one.
2. ``train_speed`` (``train_speed.py --preset cuda``): ResNet-101 DeepLab-v2, 512 x 512 crops,
   batch 4 and 16, fp32 and bf16 + channels-last; the network alone (forward, the head's
   cross-entropy, backward, SGD) against the full SPML step (the same + k-means segments,
   the relations against the memory). Images/s and peak memory of each.
3. ``contrastive_speed`` (``contrastive_speed.py --device cuda``): the batched contrastive
   step (k-means, relations, loss, backward) against a per-image loop, at 128 and 512 px crops;
   their losses must agree to 1e-5.
4. ``pipeline``: the ``gpu`` preset (`presets.PRESETS`) end to end on generated scenes
   (``make_data``): stage 1 for a few hundred steps, stage 2 (pseudo labels, the head), and
   the scores of every predictor on the val images. Without pydensecrf2 the CRF is left out
   (pseudo labels without it; no ``*_crf`` scores) and the log says so.
5. ``notebook``: ``notebooks/09_training.ipynb`` through papermill with ``PRESET = "gpu"``,
   when papermill is importable; otherwise skipped, with the reason in the log.

What it writes (``OUT``)::

    log.txt                     every step's command, output, status and time (appended)
    summary.csv                 step, status (ok / failed / timeout / skipped / not run),
                                seconds, note
    environment.json            step 1
    train_speed_cuda.{csv,png}  step 2: one row per (precision, batch)
    contrastive_speed_cuda.{csv,png}   step 3: one row per (crop, relation set)
    pipeline.csv                step 4: one row per predictor, with the run's sizes and times
    pipeline/                   its generated data and run folder (config, metrics, weights)
    notebook09/                 step 5: the executed notebook and its figures

What the figures mean:

* ``train_speed_cuda.png``, left: images per second of the network alone (blue) and of the
  full SPML step (orange) for each batch size and precision; the label over each pair is
  full / alone, the share of the network's speed that SPML keeps (target >= 90 %). Right:
  peak GPU memory (``torch.cuda.max_memory_allocated``) of each; the label is what the SPML
  step adds (target <= 1 GiB). A configuration that runs out of memory is a CSV row with status
  ``out of memory``, not a bar.
* ``contrastive_speed_cuda.png``: seconds per contrastive step of the library and of the loop,
  and their ratio (the speed-up), per crop size and relation set.
* ``pipeline.csv``: ``miou`` of each predictor (``knn``: k-means segments labelled by their
  nearest training prototypes; ``softmax``: the stage-1 head; ``stage2``: the head trained on
  pseudo labels; ``*_crf``: with the dense CRF), ``pseudo_miou`` (the pseudo labels against the
  training images' truth), and the stage-1 ``images_per_s``. A few hundred steps from scratch
  on generated scenes show that the pipeline runs and learns on CUDA, not the paper's numbers.

Running it again continues: steps recorded ``ok`` or ``skipped`` in ``summary.csv`` are not
run again (``--redo STEP`` runs one again); ``log.txt`` is appended to, never replaced.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import provenance

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gpu"
BUDGET_S = 480  # the whole check: 8 minutes; no step starts after it
# seconds each step may take at most; together they fit the budget
LIMITS = {"train_speed": 180, "contrastive_speed": 90, "pipeline": 150, "notebook": 60}
STEPS = ("environment", *LIMITS)
OPTIONAL = ("papermill", "jupyter_client", "pydensecrf", "umap", "pycocotools", "sklearn")
# the sizes of each step: the GPU run, and the dry run (same code paths, tiny, CPU, 1 thread)
SIZES = {
    "gpu": {
        "train_speed": ["--preset", "cuda", "--steps", "10", "--warmup", "3"],
        "contrastive_speed": ["--device", "cuda", "--crops", "128", "512", "--repeats", "5"],
        # 64 scenes of 128 px brought to 512 px crops, 200 steps of batch 8: about a minute
        "pipeline": {"preset": "gpu", "train": 64, "val": 16, "size": 128, "fields": {
            "max_steps": 200, "checkpoint_every": 100}, "stage2_steps": 200},
        "notebook": {"PRESET": "gpu", "MAX_STEPS": 200},
    },
    # the dry run: the same scripts and functions at tiny sizes with the small network, on one
    # CPU thread (CPU bf16 autocast is 15x slower than float32 here: the ResNet under bf16,
    # channels-last and SyncBatchNorm have their own CPU tests, tests/training/test_precision.py)
    "dry": {
        "train_speed": ["--preset", "cpu", "--crop", "64", "--batch-sizes", "2",
                        "--precisions", "fp32", "bf16", "--steps", "1", "--warmup", "1",
                        "--threads", "1"],
        "contrastive_speed": ["--device", "cpu", "--crops", "64", "--configs", "scribble",
                              "--repeats", "1", "--loop-repeats", "1", "--threads", "1"],
        "pipeline": {"preset": "cpu", "train": 4, "val": 2, "size": 48, "fields": {
            "width": 8, "crop_size": 48, "batch_size": 2, "embedding_dim": 8,
            "contrast_images": 4, "max_steps": 2, "num_workers": 0}, "stage2_steps": 2},
        "notebook": {"PRESET": "cpu"},
    },
}  # fmt: skip


# --------------------------------------------------------------------------------- steps
def environment(out):
    """Write ``environment.json``: versions, the device, the optional packages present."""
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
        "optional": {name: importlib.util.find_spec(name) is not None for name in OPTIONAL},
        "commit": provenance.git_commit(),
    }
    if torch.cuda.is_available():
        info["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    (out / "environment.json").write_text(json.dumps(info, indent=2) + "\n")
    return f"{info['device']}, torch {info['torch']}, CUDA {info['cuda']}"


def pipeline(out, sizes):
    """Stage 1, stage 2 and the scores of the preset on generated scenes; ``pipeline.csv``."""
    from spml_lab.data import make_data
    from spml_lab.prediction import evaluate, stage2
    from spml_lab.training import presets, train

    folder = out / "pipeline"
    data = folder / "data"
    if not (data / "dataset.json").is_file():  # a whole dataset, or none yet: write it
        make_data.write_dataset(
            data, num_train=sizes["train"], num_val=sizes["val"], size=sizes["size"],
            seed=0, progress=False,
        )  # fmt: skip
    cfg = presets.preset_config(
        sizes["preset"], data=str(data), annotation="scribbles", out_dir=str(folder / "run"),
        resume=True, progress=False, **sizes["fields"],
    )  # fmt: skip
    device = train.resolve_device(cfg.device)
    started = time.perf_counter()
    run = train.fit(cfg)  # resume=True: a killed earlier try continues
    train_s = time.perf_counter() - started
    with open(run / "metrics.csv", newline="") as handle:
        speeds = [float(r["images_per_s"]) for r in csv.DictReader(handle)][1:]  # after warm-up
    crf = importlib.util.find_spec("pydensecrf") is not None
    print(f"dense CRF {'available' if crf else 'missing (pydensecrf2): left out'}", flush=True)
    started = time.perf_counter()
    result = stage2.fit_head(
        run, steps=sizes["stage2_steps"], device=str(device), pseudo_options={"crf": crf}
    )
    stage2_s = time.perf_counter() - started
    methods = ("knn", "softmax", "stage2") + (("softmax_crf", "stage2_crf") if crf else ())
    started = time.perf_counter()
    scores = evaluate.evaluate_run(run, methods=methods, device=str(device))
    common = {
        "preset": sizes["preset"], "device": str(device), "model": cfg.model,
        "crop": cfg.crop_size, "batch": cfg.batch_size, "steps": cfg.max_steps,
        "precision": train.network_precision(cfg, device), "train_s": round(train_s, 1),
        "images_per_s": round(sum(speeds) / len(speeds), 2) if speeds else "",
        "stage2_s": round(stage2_s, 1), "eval_s": round(time.perf_counter() - started, 1),
        "pseudo_miou": "" if result.pseudo_miou is None else round(result.pseudo_miou, 4),
        "crf": crf, "val_images": scores["images"],
    }  # fmt: skip
    rows = [
        {**common, "method": m, "miou": round(scores[m]["miou"], 4),
         "pixel_accuracy": round(scores[m]["pixel_accuracy"], 4)}
        for m in methods
    ]  # fmt: skip
    _write_csv(out / "pipeline.csv", rows)
    return ", ".join(f"{r['method']} {r['miou']:.3f}" for r in rows)


def notebook(out, parameters):
    """Run notebook 09 through papermill; returns the skip reason when papermill is missing."""
    missing = [n for n in ("papermill", "jupyter_client") if importlib.util.find_spec(n) is None]
    if missing:
        return None, f"{' and '.join(missing)} not importable: notebook 09 not run"
    from spml_lab.sweeps import runner

    folder = out / "notebook09"
    values = {**parameters, "OUT_DIR": str(folder / "run")}
    executed = runner.run_notebook(
        ROOT / "notebooks" / "09_training.ipynb", folder, values, progress=False
    )
    return executed, f"ran {executed.name} with {values}"


def _write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------------- driver
def _command(step, out, dry_run):
    """Return a step's command: its benchmark script, or this file for that step alone."""
    sizes = SIZES["dry" if dry_run else "gpu"]
    if step in ("train_speed", "contrastive_speed"):
        script = ROOT / "benchmarks" / f"{step}.py"
        return [sys.executable, str(script), *sizes[step], "--out", str(out)]
    return [sys.executable, str(Path(__file__).resolve()), "--step", step, "--out", str(out)] + (
        ["--dry-run"] if dry_run else []
    )


def _read_summary(path):
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {row["step"]: row for row in csv.DictReader(handle)}


def run_all(out, *, dry_run=False, redo=(), budget_s=BUDGET_S):
    """Run every step not done yet (see the module notes); return the summary rows."""
    out.mkdir(parents=True, exist_ok=True)
    summary = _read_summary(out / "summary.csv")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
    if dry_run:
        env["OMP_NUM_THREADS"] = "1"  # tiny sizes: threads only add start-up time
    started = time.perf_counter()
    with open(out / "log.txt", "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} gpu.py "
                  f"{'--dry-run ' if dry_run else ''}into {out}\n")  # fmt: skip
        for step in STEPS:
            earlier = summary.get(step, {}).get("status")
            if earlier in ("ok", "skipped") and step not in redo:
                log.write(f"--- {step}: {earlier} in an earlier run, not run again\n")
                continue
            left = budget_s - (time.perf_counter() - started)
            if left <= 0:
                summary[step] = {"step": step, "status": "not run", "seconds": 0,
                                 "note": f"the {budget_s} s budget was spent"}  # fmt: skip
                continue
            command = _command(step, out, dry_run)
            log.write(f"--- {step}: {' '.join(command)}\n")
            log.flush()
            begin = time.perf_counter()
            if step == "environment":  # in this process: nothing heavy
                status, note = "ok", environment(out)
            else:
                status, note = _run(command, min(LIMITS[step], left), env, log)
            seconds = round(time.perf_counter() - begin, 1)
            log.write(f"--- {step}: {status} in {seconds} s; {note}\n")
            log.flush()
            summary[step] = {"step": step, "status": status, "seconds": seconds, "note": note}
            _write_csv(out / "summary.csv", [summary[s] for s in STEPS if s in summary])
            print(f"{step:<18} {status:<8} {seconds:>7.1f} s  {note}", flush=True)
    return [summary[s] for s in STEPS if s in summary]


def _run(command, limit, env, log):
    """Run a step's command with a time limit; return (status, note)."""
    try:
        result = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit
        )
    except subprocess.TimeoutExpired as error:
        log.write(_text(error.stdout) + _text(error.stderr))
        return "timeout", f"stopped after {limit:.0f} s"
    log.write(result.stdout + result.stderr)
    lines = (result.stdout + result.stderr).strip().splitlines() or [""]
    if result.returncode != 0:
        return "failed", f"exit {result.returncode}: {lines[-1][:200]}"
    marked = [line for line in lines if line.startswith("RESULT ")]
    status = "skipped" if marked and marked[-1].startswith("RESULT skipped") else "ok"
    return status, (marked[-1].split(" ", 2)[-1] if marked else lines[-1][:200])


def _text(stream):
    if stream is None:
        return ""
    return stream.decode(errors="replace") if isinstance(stream, bytes) else stream


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results folder (default {RESULTS.relative_to(ROOT)}; a new "
                        "temporary folder with --dry-run)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true",
                        help="the same steps at tiny sizes on the CPU")  # fmt: skip
    parser.add_argument("--redo", nargs="*", default=(), choices=STEPS,
                        help="run these steps again, finished or not")  # fmt: skip
    parser.add_argument("--step", choices=["pipeline", "notebook"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = SIZES["dry" if args.dry_run else "gpu"]
    if args.step == "pipeline":
        print(f"RESULT ok {pipeline(args.out, sizes['pipeline'])}")
        return 0
    if args.step == "notebook":
        executed, note = notebook(args.out, sizes["notebook"])
        print(f"RESULT {'ok' if executed else 'skipped'} {note}")
        return 0
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device here: run it on a GPU machine, or use --dry-run")
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu_dry_run_")) if args.dry_run else RESULTS)
    rows = run_all(out.resolve(), dry_run=args.dry_run, redo=set(args.redo))
    print(f"wrote {out}: summary.csv, log.txt and the steps' files")
    return 0 if all(r["status"] in ("ok", "skipped") for r in rows) else 1  # "not run": 1


if __name__ == "__main__":
    sys.exit(main())
