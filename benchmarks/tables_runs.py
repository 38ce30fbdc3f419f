"""Tables of the calibration, the shipped runs and the one-image benchmark, from their CSVs.

Each function returns ``{NAME: (header, rows)}`` for `tables.py`, which formats, writes and
checks them; the CSVs are read as their scripts wrote them (`claims.read_results`).
"""

from __future__ import annotations

import json

from spml_lab.sweeps import claims

SHIPPED_RUNS = "spml_lab/data_samples/runs/runs.csv"  # written by benchmarks/sample_runs.py
EMBEDDING = "embedding_shipped/summary.json"  # written by notebook 10 on the shipped runs
NETWORKS = {"baseline": "baseline (partial CE)", "spml_scribbles": "SPML scribbles",
            "spml_points": "SPML points"}  # fmt: skip
PREDICTORS = {"stage2_crf": "stage 2 + CRF", "softmax_crf": "softmax + CRF"}


def _score(value):
    return f"{float(value):.3f}" if value != "" else ""


def _percent(fraction):
    return f"{100 * float(fraction):.1f}".removesuffix(".0") + " %"


def calibration(results):
    """`calibrate.py`: every setting it tried, val mIoU of each baseline, and its verdict."""
    verdicts = {r["setting"]: r for r in claims.read_results("calibration_summary.csv", results)}
    settings = {}
    for r in claims.read_results("calibration.csv", results):
        settings.setdefault(r["setting"], {"row": r})[r["method"]] = _score(r["miou"])
    rows = []
    for name, cell in settings.items():
        r = cell["row"]
        data = f"{r['kind'] or 'objects'}, {r['size']} px, difficulty {r['difficulty']}"
        if r["object_scale"]:
            data += f", object size x {float(r['object_scale']):g}"
        recipe = f"{int(r['steps']):,} steps of {r['batch']}, lr {float(r['lr']):g}"
        if r["head_lr_mult"]:
            recipe += f", head lr x {float(r['head_lr_mult']):g}"
        if r["head_dropout"]:
            recipe += f", head dropout {float(r['head_dropout']):g}"
        verdict = verdicts.get(name, {}).get("passes", "")
        rows.append((f"`{name}`", data, r["superpixels"], recipe, cell.get("full", ""),
                     cell.get("scribbles", ""), cell.get("points", ""),
                     {"True": "passes", "False": "fails"}.get(verdict, "")))  # fmt: skip
    header = ("setting", "scenes", "superpixels", "recipe", "full masks",
              "scribbles, partial CE", "points, partial CE", "checks")  # fmt: skip
    return {"calibration": (header, rows)}


def difficulty(results):
    """`difficulty.py`: full masks against points on the default data, plain partial CE."""
    rows = [
        (r["kind"], r["difficulty"], r["supervision"], _percent(r["labelled_fraction"]),
         _score(r["val_miou"]), f"{float(r['seconds']) / 60:.1f} min")
        for r in claims.read_results("difficulty.csv", results)
    ]  # fmt: skip
    header = ("scenes", "difficulty", "supervision", "labelled pixels", "val mIoU",
              "training time")  # fmt: skip
    return {"difficulty": (header, rows)}


def shipped_runs(root):
    """`sample_runs.py`: the shipped runs, their headline val mIoU and training time."""
    found = claims.read_results(root / SHIPPED_RUNS)
    rows = []
    for r in found:
        if r["annotation"] == "full":
            trained_on = "full masks, the same head and network"
        elif r["relations"].startswith("none"):
            trained_on = f"{r['annotation']}, partial cross-entropy"
        else:
            trained_on = f"{r['annotation']}, SPML"
        predictor = PREDICTORS.get(r["headline"], r["headline"])
        if r["val_knn"]:
            predictor += (f" (kNN {_score(r['val_knn'])}, stage-1 softmax + CRF "
                          f"{_score(r['val_softmax_crf'])})")  # fmt: skip
        time = f"{float(r['train_seconds']):.0f} s"
        if r["stage2_seconds"]:
            time += f" + {float(r['stage2_seconds']):.0f} s"
        rows.append((f"`{r['run']}`", trained_on, r["steps"], _score(r["val_miou"]), predictor,
                     time))  # fmt: skip
    images = "/".join(sorted({r["val_images"] for r in found}))
    header = ("run", "trained on", "steps", f"val mIoU ({images} images)", "predictor",
              "training time (stage 1 + stage 2)")  # fmt: skip
    return {"shipped_runs": (header, rows)}


def embedding(results):
    """Notebook 10 on the shipped runs: silhouette and same/different-class cosine gap."""
    summary = json.loads((results / EMBEDDING).read_text())
    rows = [(NETWORKS.get(key[4:], key[4:]), f"{summary['silhouette_' + key[4:]]:.3f}",
             f"{summary[key]:.3f}") for key in summary if key.startswith("gap_")]  # fmt: skip
    return {"embedding": (("network", "silhouette", "gap"), rows)}


ONE_IMAGE_METHODS = {"spml": "SPML", "forest": "forest", "partial_ce": "partial CE"}
ONE_IMAGE_LABELS = {"scribbles": "scribbles", "scribbles_30": "30 % of each scribble",
                    "points": "points"}  # fmt: skip


def one_image(results):
    """`one_image.py`: mIoU per method on single generated scenes, and SPML's differences."""
    summary = claims.read_results("one_image_summary.csv", results)
    verdicts = claims.read_results("one_image_claims.csv", results)
    cells = {(r["dataset"], r["kind"], r["method"]): r for r in summary}
    rows = []
    for dataset, kind in dict.fromkeys((r["dataset"], r["kind"]) for r in summary):
        scores = [f"{float(c['miou_mean']):.3f} ± {float(c['miou_std']):.3f}"
                  for m in ONE_IMAGE_METHODS if (c := cells.get((dataset, kind, m)))]  # fmt: skip
        versus = [f"{float(v['difference']):+.3f} ± {2 * float(v['se']):.3f} ({v['verdict']})"
                  for v in verdicts if (v["dataset"], v["kind"]) == (dataset, kind)]  # fmt: skip
        n = cells[(dataset, kind, "spml")]["n"]
        seconds = " / ".join(f"{float(cells[(dataset, kind, m)]['seconds_mean']):.1f}"
                             for m in ONE_IMAGE_METHODS)  # fmt: skip
        rows.append((dataset, ONE_IMAGE_LABELS.get(kind, kind), n, *scores, *versus, seconds))
    header = ("scenes", "labels", "n", *ONE_IMAGE_METHODS.values(),
              "SPML - forest (± 2 SE)", "SPML - partial CE (± 2 SE)",
              "s per image (" + " / ".join(ONE_IMAGE_METHODS.values()) + ")")  # fmt: skip
    return {"one_image": (header, rows)}


def demo(root, results):
    """`demo_spread.py` and the shipped runs: the demo's table, with its spread over CPU kernels.

    The short runs' mIoU and time are those of this machine's own kernels (setting "native");
    the spread is the lowest and highest mIoU over every kernel setting the script ran.
    """
    spread = claims.read_results("demo_spread.csv", results)
    rows = []
    for run in dict.fromkeys(r["run"] for r in spread):
        runs = [r for r in spread if r["run"] == run]
        native = next(r for r in runs if r["setting"] == "native")
        scores = sorted(float(r["miou"]) for r in runs)
        rows.append((run, native["steps"], PREDICTORS.get(native["method"], native["method"]),
                     f"{float(native['miou']):.3f}",
                     f"{scores[0]:.3f} to {scores[-1]:.3f} ({len(runs)} settings)",
                     f"{float(native['seconds']):.0f} s"))  # fmt: skip
    for name in ("baseline_scribbles", "spml_scribbles"):  # what the demo draws beside them
        r = next(r for r in claims.read_results(root / SHIPPED_RUNS) if r["run"] == name)
        label = "SPML" if name.startswith("spml") else "partial CE"
        rows.append((f"{label}, {r['steps']} steps (shipped)", r["steps"],
                     PREDICTORS.get(r["headline"], r["headline"]), _score(r["val_miou"]),
                     "(stored run)", f"{float(r['train_seconds']):.0f} s"))  # fmt: skip
    header = ("run", "steps", "predictor", "val mIoU (32 images)",
              "over CPU kernel settings", "training time")  # fmt: skip
    return {"demo": (header, rows)}


def tables(root, results):
    """Every table of this module by name, as ``(header, rows)``."""
    return {**calibration(results), **difficulty(results), **shipped_runs(root),
            **embedding(results), **one_image(results), **demo(root, results)}  # fmt: skip
