"""Tables of time and memory: how fast each part runs and what it needs, from the committed CSVs.

Each function returns ``{NAME: (header, rows)}`` for `tables.py`, which formats, writes and
checks them; the CSVs are read as their scripts wrote them (`claims.read_results`).
"""

from __future__ import annotations

from spml_lab.sweeps import claims


def _train_speed_row(r):
    device = "CPU" if r["device"] == "cpu" else r["device"]
    if r["device"] == "cpu":
        device += f", {r['threads']} thread(s)"
    setting = f"{r['model']}, {r['crop']} px, batch {r['batch']}, {r['precision']}"
    if r.get("status", "ok") != "ok":  # out of memory: a row without numbers
        return (device, setting, r["status"], "—", "—", "—", "—")
    return (
        device,
        setting,
        f"{float(r['alone_img_s']):.1f} img/s",
        f"{float(r['full_img_s']):.1f} img/s",
        f"{float(r['ratio']):.0%} ({r['clock']}); {float(r['ratio_wall']):.0%} (wall clock)",
        f"+{float(r['extra_mib']):.0f} MiB ({r['memory_kind']})",
        f"{r['load_before']} -> {r['load_after']}",
    )


def train_speed(results):
    """`train_speed.py`: images/s and peak memory, network alone against the full SPML step."""
    # the CUDA CSV appears once a GPU has measured it
    rows = [_train_speed_row(r) for path in sorted(results.glob("train_speed_*.csv"))
            for r in claims.read_results(path)]  # fmt: skip
    header = ("device", "model, crop, batch, precision", "network alone", "full SPML step",
              "full / alone", "extra peak memory", "load")  # fmt: skip
    return {"train_speed": (header, rows)}


def contrastive_speed(results):
    """`contrastive_speed.py`: the batched contrastive step against the per-image loop."""
    relations = {"scribble": "scribble run (3)", "all": "all four"}
    rows = [
        (f"{r['crop']} x {r['crop']} ({r['embedding'].replace('x', ' x ')})",
         relations.get(r["config"], r["config"]),
         f"{int(r['segments']):,} / {int(r['memory_prototypes']):,}",
         f"{float(r['ours_s']):.3f} s", f"{float(r['loop_s']):.2f} s",
         f"{float(r['speedup']):.1f}x",
         f"{float(r['max_loss_diff']):.1e}".replace("e-0", "e-"),
         f"{r['device']}, {r['threads']} thread(s), {r.get('clock', 'wall clock')}",
         f"{r['load_before']} -> {r['load_after']}")
        for r in claims.read_results("contrastive_speed.csv", results)
    ]  # fmt: skip
    header = ("crop (embedding map)", "relations", "segments / memory", "spml_lab", "loop",
              "speed-up", "max loss diff", "device", "load")  # fmt: skip
    return {"contrastive_speed": (header, rows)}


def step_parts(results):
    """`step_parts.py`: CPU time of each part of one SPML step, and its share of the step."""
    rows = [(r["part"], f"{float(r['median_ms']):.1f} ms", f"{float(r['share_of_full']):.0%}")
            for r in claims.read_results("step_parts_cpu.csv", results)]  # fmt: skip
    return {"step_parts": (("part of the step", "CPU time per step", "share of the full step"),
                           rows)}  # fmt: skip


def wall_times(results):
    """`timed.py`: the wall clock and CPU time of whole benchmark commands."""
    rows = [(f"`{r['command']}`", r["commit"], f"{float(r['wall_s']) / 60:.1f} min",
             f"{float(r['cpu_s']) / 60:.1f} min", f"{r['cores']} ({r['machine']})",
             f"{r['load_before']} -> {r['load_after']}", r["started"][:10])
            for r in claims.read_results("wall_times.csv", results)]  # fmt: skip
    header = ("command", "commit", "wall clock", "CPU time", "cores", "load", "date")
    return {"wall_times": (header, rows)}


def speed_summary(results):
    """Return the README's speed figures: the step, the reduced benchmark, a parallel sweep."""
    rows = []
    for r in claims.read_results("train_speed_cpu.csv", results):
        rows.append(
            (
                f"SPML training step / network alone ({r['model']} net, batch {r['batch']} "
                f"of {r['crop']} px, {r['threads']} thread)",
                f"{float(r['ratio']):.0%} ({r['clock']})",
                "`train_speed_cpu.csv`",
            )
        )
    for r in claims.read_results("wall_times.csv", results):
        if "accuracy.py --reduced" in r["command"]:
            rows.append(
                (
                    f"reduced accuracy benchmark from an empty work folder, {r['cores']} cores",
                    f"{float(r['wall_s']) / 60:.0f} min (wall clock)",
                    "`wall_times.csv`",
                )
            )
    for r in claims.read_results("sweep_speed.csv", results):
        if r["jobs"] != "1":
            rows.append(
                (
                    f"sweep of {r['runs']} notebook runs, `--jobs {r['jobs']}` against 1",
                    f"{float(r['speedup']):.2f}x",
                    "`sweep_speed.csv`",
                )
            )
    return {"speed_summary": (("what", "measured", "file"), rows)}  # fmt: skip


def sweep_speed(results):
    """`sweep_speed.py`: a 4-run sweep one at a time against ``--jobs 2``."""
    found = claims.read_results("sweep_speed.csv", results)
    rows = [
        (r["jobs"], r["executor"], r["threads_per_run"], f"{float(r['seconds']):.1f} s",
         f"{float(r['mean_run_seconds']):.1f} s", f"{float(r['speedup']):.2f}x",
         r["load_average_1min_before"])
        for r in found
    ]  # fmt: skip
    runs = "/".join(sorted({r["runs"] for r in found}))
    header = ("`--jobs`", "executor", "threads per run", f"all {runs} runs", "per run",
              "speed-up", "load before")  # fmt: skip
    return {"sweep_speed": (header, rows)}


def prepare_speed(results):
    """`prepare_speed.py`: time and disk of `prepare voc` per 1,000 VOC-sized images."""
    rows = [
        (f"{r['workers']} of {r['cpus']}", r["load_average_1min"],
         f"{float(r['minutes_per_1000']):.1f} min ({float(r['seconds']):.1f} s for {r['images']})",
         f"{float(r['mb_per_1000']):.0f} MB, of which {float(r['jpeg_mb_per_1000']):.0f} MB "
         "the copied JPEGs")
        for r in claims.read_results("prepare_speed.csv", results)
    ]  # fmt: skip
    header = ("workers of cores", "load average (1 min, after)", "time per 1,000 images",
              "disk per 1,000 images")  # fmt: skip
    return {"prepare_speed": (header, rows)}


def predict_memory(results):
    """`predict_memory.py`: peak memory and time of `spml-lab predict` on large JPEGs."""
    cells = {}
    for r in claims.read_results("predict_memory.csv", results):
        photo = f"{int(r['width']):,} x {int(r['height']):,} {r['format'].upper()}"
        cells.setdefault((photo, r["max_side"]), {})[r["crf"]] = (
            f"{int(r['peak_rss_mib']):,} MiB, {float(r['seconds']):.1f} s"
        )
    rows = [(photo, side, crf.get("on", "—"), crf.get("off", "—"))
            for (photo, side), crf in cells.items()]  # fmt: skip
    header = ("photo", "`--max-side`", "peak memory, time: with the CRF", "without the CRF")
    return {"predict_memory": (header, rows)}


def synthetic_speed(results):
    """`synthetic_speed.py`: seconds to generate the scenes of each kind on one core."""
    rows = [
        (f'"{r["kind"]}"', f"{int(r['images']):,}", f"{r['size']} x {r['size']}",
         f"{float(r['cpu_seconds']):.1f} s", f"{float(r['seconds']):.1f} s",
         r["load_average_1min_before"])
        for r in claims.read_results("synthetic_speed.csv", results)
    ]  # fmt: skip
    header = ("kind", "scenes", "size", "CPU time (one core)", "wall time", "load before")
    return {"synthetic_speed": (header, rows)}


def _study_part(row):
    """Which part of the relations study a run of its CSV belongs to (its docstring's a to e)."""
    if row["dataset"] not in ("objects", "parts"):
        return "e. mechanism tests"
    if row["kind"].startswith("scribbles_"):
        return "d. shortened scribbles"
    if row["dataset"] == "parts":
        return "c. parts scenes"
    if row["method"] == "baseline_stage2":
        return "b. objects, partial CE + pipeline"
    return "a. objects, a relation removed"


def _accuracy_part(row):
    return {"baseline": "partial CE", "full": "full masks"}.get(row["method"], "SPML, ablations")


def run_times(results):
    """Single-thread minutes per run of the accuracy benchmark and the relations study."""
    rows = []
    for study, name, part in (("accuracy", "accuracy_cpu_reduced.csv", _accuracy_part),
                              ("relations", claims.STUDY, _study_part)):  # fmt: skip
        groups = {}
        for r in claims.read_results(name, results):
            if r["split"] == "test":
                groups.setdefault(part(r), []).append(r)
        for label, group in sorted(groups.items()):
            stage1 = [float(r["train_seconds"]) / 60 for r in group]
            stage2 = [float(r["stage2_seconds"] or 0) / 60 for r in group]
            total = [a + b for a, b in zip(stage1, stage2, strict=True)]
            rows.append((study, label, len(group),
                         f"{sum(stage1) / len(group):.1f} ({min(stage1):.1f}-{max(stage1):.1f})",
                         f"{sum(stage2) / len(group):.1f}" if any(stage2) else "—",
                         f"{sum(total) / len(group):.1f}",
                         f"{sum(total) / 60:.1f}"))  # fmt: skip
    header = ("study", "part", "runs", "stage 1, min per run (range)", "stage 2, min per run",
              "total, min per run", "total, hours")  # fmt: skip
    return {"run_times": (header, rows)}


def tables(results):
    """Every table of this module by name, as ``(header, rows)``."""
    return {**train_speed(results), **contrastive_speed(results), **sweep_speed(results),
            **prepare_speed(results), **predict_memory(results), **synthetic_speed(results),
            **run_times(results), **step_parts(results), **wall_times(results),
            **speed_summary(results)}  # fmt: skip
