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

import math
from typing import NamedTuple

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
]

KINDS = ("tags", "boxes", "points", "scribbles")  # the weak annotations of the "objects" scenes
ABLATIONS = ("low_level", "semantic_annotation", "cooccurrence")  # removed one at a time


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
        The score column; rows where it is ``""`` (not scored) are left out.

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
        if row["split"] == split and row[key] != "":
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
