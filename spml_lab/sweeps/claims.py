"""Cells of seeded runs and the claims between them: when one method beats another.

A benchmark trains every *cell* (dataset, annotation kind, method) with several seeds and
scores each run. A cell is reported as mean +- std over its seeds, and a claim "A beats B"
holds only when the difference of the two means exceeds twice its standard error::

    difference = mean_a - mean_b
    se         = sqrt(sd_a ** 2 / n_a + sd_b ** 2 / n_b)        sd: sample std (n - 1)
    holds      = difference > 2 * se

With 3 seeds per cell that is a rough test (about a 95 % one-sided bound when the spread is
well estimated), but it refuses a claim that one lucky seed would make.

Rows are dicts as `csv.DictReader` gives them (values strings, ``""`` for a missing score),
one per run and split, with at least ``dataset``, ``kind``, ``method``, ``seed``, ``split``
and the scored columns (``miou``, ``miou_knn``); `benchmarks/accuracy.py` writes them.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import NamedTuple

import spml_lab

__all__ = [
    "KINDS",
    "ABLATIONS",
    "Claim",
    "mean_std",
    "cell_values",
    "summarise",
    "compare",
    "paper_claims",
    "check_claims",
    "as_written",
    "RELATIONS",
    "MECHANISM_TESTS",
    "results_folder",
    "read_results",
    "study_rows",
    "check_relations_study",
    "relation_effects",
    "STAGE2_CLAIM",
    "stage2_effects",
]

KINDS = ("tags", "boxes", "points", "scribbles")  # the weak annotations of the "objects" scenes
ABLATIONS = ("low_level", "semantic_annotation", "cooccurrence")  # removed one at a time
RELATIONS = ("low_level", "semantic_annotation", "cooccurrence", "feature_affinity")
# The relations study's mechanism tests (benchmarks/relations.py, cell e): name, the setting
# where the hypothesis expects the larger effect, the one it compares with, kind, relation.
MECHANISM_TESTS = (
    ("H_occ", "objects_cooc1", "objects_cooc0", "tags", "cooccurrence"),
    ("H_low", "objects_sp48", "objects", "points", "low_level"),
)
# the claim that pits stage 2 + CRF against the stage-1 head + CRF of the same SPML runs
STAGE2_CLAIM = "stage 2 + CRF > stage-1 softmax + CRF"
STUDY = "relations_cpu_reduced.csv"  # the relations study's runs
# The accuracy benchmark's rows that the study reads instead of retraining those cells, frozen
# as they were when the study ran: the accuracy benchmark was rerun after the loss blocks
# changed how the loss is summed, and a study must not compare runs of two code versions.
# Rerunning the study's ablations means copying the accuracy CSV of the same code here.
STUDY_REUSES = "relations_cpu_reduced_reused.csv"


class Claim(NamedTuple):
    """A claim: cell `better` scores higher than cell `worse` (cells: dataset, kind, method)."""

    text: str
    better: tuple
    worse: tuple


def mean_std(values):
    """Mean and sample standard deviation (n - 1) of a list of numbers.

    Parameters
    ----------
    values : sequence of float

    Returns
    -------
    mean, std : float or None
        None for the mean of no values, and for the std of fewer than two.

    Examples
    --------
    >>> mean_std([0.5, 0.6, 0.7])
    (0.6, 0.09999999999999998)
    >>> mean_std([0.5])
    (0.5, None)
    """
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def cell_values(rows, split="test", key="miou"):
    """Each cell's scores on `split`, in the order the cells first appear.

    Parameters
    ----------
    rows : sequence of dict
    split : str, optional
    key : str, optional
        The score column; rows where it is ``""`` or absent (not scored) are left out.

    Returns
    -------
    values : dict of (dataset, kind, method) to list of float

    Examples
    --------
    >>> rows = [{"dataset": "d", "kind": "k", "method": "m", "split": "test", "miou": "0.5"},
    ...         {"dataset": "d", "kind": "k", "method": "m", "split": "val", "miou": "0.9"}]
    >>> cell_values(rows)
    {('d', 'k', 'm'): [0.5]}
    """
    values = {}
    for row in rows:
        if row["split"] == split and row.get(key, "") != "":
            values.setdefault((row["dataset"], row["kind"], row["method"]), []).append(
                float(row[key])
            )
    return values


def summarise(rows, split="test", keys=("miou", "miou_knn")):
    """Mean, std and n of every cell's scores on `split` (the benchmark's ``_summary.csv``).

    Parameters
    ----------
    rows : sequence of dict
    split : str, optional
    keys : sequence of str, optional
        Score columns; each gives ``{key}_mean`` and ``{key}_std``, rounded to 4 decimals,
        ``""`` where the cell has no score (or, for the std, fewer than two).

    Returns
    -------
    summary : list of dict
        One per cell, in the order the cells first appear: ``dataset``, ``kind``, ``method``,
        ``n`` (runs of the cell on `split`), the means and stds, and ``seeds`` (space-separated).

    Examples
    --------
    >>> rows = [{"dataset": "d", "kind": "k", "method": "m", "seed": s, "split": "test",
    ...          "miou": v, "miou_knn": ""} for s, v in enumerate(["0.5", "0.7"])]
    >>> summarise(rows)  # doctest: +NORMALIZE_WHITESPACE
    [{'dataset': 'd', 'kind': 'k', 'method': 'm', 'n': 2, 'miou_mean': 0.6, 'miou_std': 0.1414,
      'miou_knn_mean': '', 'miou_knn_std': '', 'seeds': '0 1'}]
    """
    cells = {}
    for row in rows:
        if row["split"] == split:
            cells.setdefault((row["dataset"], row["kind"], row["method"]), []).append(row)
    out = []
    for (dataset, kind, method), group in cells.items():
        entry = {"dataset": dataset, "kind": kind, "method": method, "n": len(group)}
        for key in keys:
            mean, std = mean_std([float(r[key]) for r in group if r[key] != ""])
            entry[f"{key}_mean"] = "" if mean is None else round(mean, 4)
            entry[f"{key}_std"] = "" if std is None else round(std, 4)
        entry["seeds"] = " ".join(str(r["seed"]) for r in group)
        out.append(entry)
    return out


def compare(a, b):
    """Difference of two cells' means and its standard error.

    Parameters
    ----------
    a, b : sequence of float
        The runs' scores of each cell.

    Returns
    -------
    difference : float
        ``mean(a) - mean(b)``, rounded to 5 decimals.
    se : float or None
        ``sqrt(sd_a^2 / n_a + sd_b^2 / n_b)``, rounded to 5 decimals; None when a cell has
        fewer than two runs (no spread to judge by).

    Examples
    --------
    >>> compare([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])
    (0.1, 0.08165)
    """
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    if sa is None or sb is None:
        return round(ma - mb, 5), None
    return round(ma - mb, 5), round(math.sqrt(sa**2 / len(a) + sb**2 / len(b)), 5)


def paper_claims(kinds=KINDS, ablations=ABLATIONS):
    """List the paper's claims as the accuracy benchmark tests them, in its order.

    Parameters
    ----------
    kinds : sequence of str, optional
        Weak annotations of the "objects" scenes.
    ablations : sequence of str, optional
        Relations removed from the scribble run, one at a time.

    Returns
    -------
    claims : list of Claim
        Per annotation (objects' `kinds`, then parts/points): SPML beats partial cross-entropy,
        and full masks beat it (the baseline's upper bound); removing each relation of
        `ablations` lowers the scribble run; feature affinity raises parts/points.

    Examples
    --------
    >>> claims = paper_claims(kinds=("points",), ablations=())
    >>> [c.text for c in claims]  # doctest: +NORMALIZE_WHITESPACE
    ['objects/points: SPML > partial CE', 'objects/points: full masks > partial CE',
     'parts/points: SPML > partial CE', 'parts/points: full masks > partial CE',
     'parts/points: feature affinity raises mIoU']
    """
    claims = []
    for dataset, kind in [("objects", k) for k in kinds] + [("parts", "points")]:
        baseline = (dataset, kind, "baseline")
        claims.append(
            Claim(f"{dataset}/{kind}: SPML > partial CE", (dataset, kind, "spml"), baseline)
        )
        full = (dataset, "full", "full")
        claims.append(Claim(f"{dataset}/{kind}: full masks > partial CE", full, baseline))
    spml = ("objects", "scribbles", "spml")
    for relation in ablations:
        text = f"objects/scribbles: removing {relation} lowers mIoU"
        claims.append(Claim(text, spml, ("objects", "scribbles", f"no_{relation}")))
    without = ("parts", "points", "no_feature_affinity")
    claims.append(
        Claim("parts/points: feature affinity raises mIoU", ("parts", "points", "spml"), without)
    )
    return claims


def check_claims(rows, split="test", key="miou", claims=None):
    """Each claim with its difference, standard error and verdict (the ``_claims.csv``).

    Parameters
    ----------
    rows : sequence of dict
    split : str, optional
    key : str, optional
        The score compared.
    claims : sequence of Claim, optional
        Default `paper_claims`. A claim whose cells have no scored run is left out.

    Returns
    -------
    checked : list of dict
        ``claim``, ``metric`` (`key`), ``difference``, ``se`` (None below two runs a cell),
        ``n`` (runs of the smaller cell) and ``holds``: ``"PASS"`` when
        ``difference > 2 * se``, ``"FAIL"`` otherwise, ``"n/a (< 2 seeds)"`` without an se.

    Examples
    --------
    >>> rows = [{"dataset": "objects", "kind": "points", "method": m, "split": "test",
    ...          "miou": v} for m, vs in (("spml", "678"), ("baseline", "123")) for v in vs]
    >>> check_claims(rows)  # means 7 and 2, se sqrt(1/3 + 1/3) # doctest: +NORMALIZE_WHITESPACE
    [{'claim': 'objects/points: SPML > partial CE', 'metric': 'miou', 'difference': 5.0,
      'se': 0.8165, 'n': 3, 'holds': 'PASS'}]
    """
    values = cell_values(rows, split, key)
    checked = []
    for claim in paper_claims() if claims is None else claims:
        if claim.better not in values or claim.worse not in values:
            continue
        difference, se = compare(values[claim.better], values[claim.worse])
        holds = se is not None and difference > 2 * se
        checked.append(
            {
                "claim": claim.text,
                "metric": key,
                "difference": difference,
                "se": se,
                "n": min(len(values[claim.better]), len(values[claim.worse])),
                "holds": "PASS" if holds else ("n/a (< 2 seeds)" if se is None else "FAIL"),
            }
        )
    return checked


def as_written(entries):
    """Entries as a CSV file holds them and `csv.DictReader` reads them back: strings, None as "".

    Parameters
    ----------
    entries : sequence of dict

    Returns
    -------
    list of dict of str to str

    Examples
    --------
    >>> as_written([{"difference": 0.1, "se": None, "n": 3}])
    [{'difference': '0.1', 'se': '', 'n': '3'}]
    """
    return [{k: "" if v is None else str(v) for k, v in entry.items()} for entry in entries]


def results_folder():
    """Return the folder of the committed benchmark results, ``benchmarks/results``.

    The results are committed beside the benchmarks that wrote them, in the source checkout
    (they are the project's evidence, not package data).

    Raises
    ------
    FileNotFoundError
        When spml_lab does not run from a source checkout.
    """
    folder = Path(spml_lab.__file__).resolve().parents[1] / "benchmarks" / "results"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no committed benchmark results at {folder}: they live in the source checkout "
            "(git clone the project and install it with `pip install -e .`)"
        )
    return folder


def read_results(name, folder=None, *, missing_ok=False):
    """Read a committed results CSV: one dict of strings per row, as the benchmark wrote it.

    Parameters
    ----------
    name : str or Path
        File name in `folder`, or a path.
    folder : Path, optional
        Default `results_folder`.
    missing_ok : bool, optional
        Read a file that does not exist yet as no rows (a benchmark before its first run).

    Returns
    -------
    rows : list of dict of str to str
    """
    path = Path(name)
    if not path.is_absolute():
        path = (results_folder() if folder is None else Path(folder)) / path
    if not path.is_file():
        if missing_ok and not path.exists():
            return []
        raise FileNotFoundError(f"results file {path} does not exist")
    with path.open() as handle:
        return list(csv.DictReader(handle))


def study_rows(name=STUDY, folder=None, *, missing_ok=False):
    """Every run of the relations study: the "objects" rows it reuses, then its own rows.

    Parameters
    ----------
    name : str or Path, optional
        The study's runs CSV (default the committed one).
    folder : Path, optional
        Where both CSVs are (default `results_folder`).
    missing_ok : bool, optional
        Read a study CSV that does not exist yet as no rows of its own.

    Returns
    -------
    rows : list of dict of str to str
        The accuracy benchmark's "objects" rows (``STUDY_REUSES``: same data, recipe and code
        as the study's runs, so the study reads them instead of retraining), then the rows of
        `name`.
    """
    folder = Path(name).parent if Path(name).is_absolute() else folder
    reused = [r for r in read_results(STUDY_REUSES, folder) if r["dataset"] == "objects"]
    return reused + read_results(name, folder, missing_ok=missing_ok)


def check_relations_study(rows, key="miou", split="test"):
    """Check the relations study's claims: each difference, its standard error and verdict.

    Parameters
    ----------
    rows : sequence of dict
        Per-run rows (`study_rows`).
    key : str, optional
        The score compared; with ``"miou"`` the claims also pit stage 2 + CRF against the
        stage-1 head + CRF (``miou_softmax_crf``) of the same SPML runs.
    split : str, optional

    Returns
    -------
    checked : list of dict
        ``claim``, ``metric``, ``difference``, ``se``, ``n`` and ``holds``, in this order of
        claims, each only where its cells have scored runs:

        * ``"{dataset}/{kind}: {relation}"``: difference = SPML - SPML without the relation;
          ``holds`` is "helps" (difference > 2 se), "hurts" (< -2 se) or "no measurable
          effect";
        * ``"{setting}: SPML > baseline_stage2"`` (the relations beyond the pseudo-label
          pipeline), ``"baseline_stage2 > partial CE"`` (the pipeline alone), ``"SPML >
          partial CE"``: PASS or FAIL;
        * ``"{setting}: stage 2 + CRF > stage-1 softmax + CRF"``: "stage 2 higher", "stage 1
          higher" or "no measurable effect";
        * each of `MECHANISM_TESTS` once all four of its cells have two runs: the relation's
          effect in the first setting minus its effect in the second, se the root of the
          two squared se's; PASS when the difference exceeds 2 se.

    Examples
    --------
    >>> rows = [{"dataset": "objects", "kind": "tags", "method": m, "split": "test",
    ...          "miou": str(v + s)} for m, v in (("spml", 0.5), ("no_cooccurrence", 0.6))
    ...         for s in (0.0, 0.01, 0.02)]
    >>> check_relations_study(rows)  # doctest: +NORMALIZE_WHITESPACE
    [{'claim': 'objects/tags: cooccurrence', 'metric': 'miou', 'difference': -0.1,
      'se': 0.00816, 'n': 3, 'holds': 'hurts'}]
    """
    values = cell_values(rows, split, key)
    out = []

    def add(text, a, b, *, two_sided=False, words=("helps", "hurts")):
        if not (values.get(a) and values.get(b)):
            return
        difference, se = compare(values[a], values[b])
        if se is None:
            verdict = "n/a (< 2 seeds)"
        elif difference > 2 * se:
            verdict = words[0] if two_sided else "PASS"
        elif two_sided and -difference > 2 * se:
            verdict = words[1]
        else:
            verdict = "no measurable effect" if two_sided else "FAIL"
        n = min(len(values[a]), len(values[b]))
        out.append({"claim": text, "metric": key, "difference": difference, "se": se, "n": n,
                    "holds": verdict})  # fmt: skip

    settings = sorted({(d, k) for d, k, m in values if m == "spml"})
    for dataset, kind in settings:
        for relation in RELATIONS:
            add(f"{dataset}/{kind}: {relation}", (dataset, kind, "spml"),
                (dataset, kind, f"no_{relation}"), two_sided=True)  # fmt: skip
    for dataset, kind in settings:
        cell, pipeline = (dataset, kind, "spml"), (dataset, kind, "baseline_stage2")
        add(f"{dataset}/{kind}: SPML > baseline_stage2", cell, pipeline)
        add(f"{dataset}/{kind}: baseline_stage2 > partial CE", pipeline,
            (dataset, kind, "baseline"))  # fmt: skip
        add(f"{dataset}/{kind}: SPML > partial CE", cell, (dataset, kind, "baseline"))
    if key == "miou":  # stage 2 against stage 1 within the same SPML runs
        stage1 = cell_values(rows, split, "miou_softmax_crf")
        for dataset, kind in settings:
            cell = (dataset, kind, "spml")
            if values.get(cell) and stage1.get(cell):
                values[(dataset, kind, "stage 1 softmax + CRF")] = stage1[cell]
                add(f"{dataset}/{kind}: {STAGE2_CLAIM}", cell,
                    (dataset, kind, "stage 1 softmax + CRF"), two_sided=True,
                    words=("stage 2 higher", "stage 1 higher"))  # fmt: skip
    for name, dataset_a, dataset_b, kind, relation in MECHANISM_TESTS:
        cells = [(d, kind, m) for d in (dataset_a, dataset_b) for m in ("spml", f"no_{relation}")]
        if all(len(values.get(c, [])) > 1 for c in cells):
            effects = [compare(values[cells[i]], values[cells[i + 1]]) for i in (0, 2)]
            difference = round(effects[0][0] - effects[1][0], 5)
            se = round((effects[0][1] ** 2 + effects[1][1] ** 2) ** 0.5, 5)
            out.append({"claim": f"{name}: {relation} effect on {kind}, {dataset_a} minus "
                        f"{dataset_b}", "metric": key, "difference": difference, "se": se,
                        "n": min(len(values[c]) for c in cells),
                        "holds": "PASS" if difference > 2 * se else "FAIL"})  # fmt: skip
    return out


def relation_effects(checked, relation=None, metric="miou"):
    """Each relation's measured effect per setting, as "what removing it changes".

    Parameters
    ----------
    checked : sequence of dict
        `check_relations_study` entries, or the rows of the study's ``_claims.csv``.
    relation : str, optional
        One of `RELATIONS`; default every relation.
    metric : str, optional

    Returns
    -------
    effects : list of dict
        ``setting`` ("dataset/kind"), ``relation``, ``change`` (mIoU without the relation
        minus with it: negative where the relation helps), ``two_se`` (2 standard errors),
        ``n`` (seeds of the smaller cell) and ``verdict`` ("helps", "hurts" or "no measurable
        effect"), in the order of `checked`.

    Examples
    --------
    >>> checked = [{"claim": "parts/points: low_level", "metric": "miou", "difference": "0.15",
    ...             "se": "0.0055", "n": "3", "holds": "helps"}]
    >>> relation_effects(checked, "low_level")  # doctest: +NORMALIZE_WHITESPACE
    [{'setting': 'parts/points', 'relation': 'low_level', 'change': -0.15, 'two_se': 0.011,
      'n': 3, 'verdict': 'helps'}]
    """
    effects = []
    for entry in checked:
        setting, _, name = entry["claim"].partition(": ")
        if entry["metric"] != metric or name not in RELATIONS:
            continue
        if (relation is not None and name != relation) or entry["se"] in (None, ""):
            continue  # another relation, or a cell of one seed: no effect to report
        effects.append({
            "setting": setting, "relation": name, "change": -float(entry["difference"]),
            "two_se": round(2 * float(entry["se"]), 5), "n": int(entry["n"]),
            "verdict": entry["holds"],
        })  # fmt: skip
    return effects


def stage2_effects(checked, metric="miou"):
    """Stage 2 + CRF against the stage-1 head + CRF of the same runs, per setting.

    Parameters
    ----------
    checked : sequence of dict
        `check_relations_study` entries, or the rows of the study's ``_claims.csv``.
    metric : str, optional

    Returns
    -------
    effects : list of dict
        One per setting with a `STAGE2_CLAIM` entry of at least two seeds, in the order of
        `checked`: ``setting`` ("dataset/kind"), ``difference`` (stage 2 + CRF minus stage-1
        softmax + CRF), ``two_se`` (2 standard errors), ``n`` (seeds) and ``verdict``
        ("stage 2 higher", "stage 1 higher" or "no measurable effect").

    Examples
    --------
    >>> checked = [{"claim": f"parts/points: {STAGE2_CLAIM}", "metric": "miou",
    ...             "difference": "0.15857", "se": "0.00541", "n": "3", "holds": "stage 2 higher"}]
    >>> stage2_effects(checked)  # doctest: +NORMALIZE_WHITESPACE
    [{'setting': 'parts/points', 'difference': 0.15857, 'two_se': 0.01082, 'n': 3,
      'verdict': 'stage 2 higher'}]
    """
    effects = []
    for entry in checked:
        setting, _, name = entry["claim"].partition(": ")
        if entry["metric"] != metric or name != STAGE2_CLAIM or entry["se"] in (None, ""):
            continue  # another claim or metric, or a cell of one seed: no verdict
        effects.append({
            "setting": setting, "difference": float(entry["difference"]),
            "two_se": round(2 * float(entry["se"]), 5), "n": int(entry["n"]),
            "verdict": entry["holds"],
        })  # fmt: skip
    return effects
