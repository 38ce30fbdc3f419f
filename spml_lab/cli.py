"""The ``spml-lab`` command.

Sub-commands are thin: each parses its arguments and calls one library function.

* ``spml-lab make-data OUT``: write a synthetic dataset in the SPML list-file layout.
* ``spml-lab run-notebook NOTEBOOK``: execute a notebook with papermill, keep it and its figures.
* ``spml-lab train [--config run.yaml] [--FIELD VALUE ...]``: stage-1 training (`train.fit`); one
  flag per `config.TrainConfig` field. Under ``torchrun --nproc-per-node N -m spml_lab.cli train``
  it trains data-parallel (`distributed`).
* ``spml-lab sweep NOTEBOOK -p NAME V1 V2 ...``: one papermill run per combination, results in
  OUT/summary.csv (`sweep`).
"""

from __future__ import annotations

import argparse
import ast
import sys

__all__ = ["main", "build_parser"]


def build_parser():
    """Build the argument parser of the ``spml-lab`` command.

    Returns
    -------
    parser : argparse.ArgumentParser
        Parser with one sub-parser per sub-command.
    """
    parser = argparse.ArgumentParser(
        prog="spml-lab",
        description="Weakly supervised segmentation by pixel-to-segment contrastive learning.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser(
        "make-data",
        help="write a synthetic dataset (images, masks, superpixels, every weak-label kind)",
        description="Generate synthetic scenes and write them in the SPML list-file layout.",
    )
    data.add_argument("out", help="output folder (created; must be empty or absent)")
    data.add_argument("--kind", default="objects", choices=["objects", "parts"])
    data.add_argument("--train", type=int, default=2000, help="number of training images")
    data.add_argument("--val", type=int, default=500, help="number of validation images")
    data.add_argument("--size", type=int, default=128, help="image side in pixels")
    data.add_argument("--seed", type=int, default=0, help="same seed, same dataset")
    data.add_argument(
        "--difficulty",
        type=float,
        default=None,
        help="0 = clean scenes, 1 = hardest (default: generator's)",
    )
    data.add_argument(
        "--superpixel-method", default="slic", help="slic | felzenszwalb | quickshift | watershed"
    )
    data.add_argument("--overwrite", action="store_true", help="allow a non-empty output folder")
    data.add_argument("--quiet", action="store_true", help="no progress bar")
    data.set_defaults(run=_make_data)

    run = commands.add_parser(
        "run-notebook",
        help="execute a notebook headlessly with papermill and export its figures",
        description="Execute NOTEBOOK with papermill; write the executed copy and its PNG figures.",
    )
    run.add_argument("notebook", help="notebook to run")
    run.add_argument("--out", default="outputs", help="output folder (default: outputs)")
    run.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="inject a parameter; VALUE is read as a Python literal when it is one",
    )
    run.set_defaults(run=_run_notebook)

    from spml_lab import config  # the flags are generated from TrainConfig's fields

    train = commands.add_parser(
        "train",
        help="train the embedding (stage 1): relations + softmax head, checkpoints, resume",
        description="Train an SPML embedding network. Every TrainConfig field is a flag; "
        "precedence: defaults < --config YAML < flags. --resume continues a killed run.",
    )
    config.add_arguments(train)
    train.set_defaults(run=_train)

    sweep = commands.add_parser(
        "sweep",
        help="run a notebook once per combination of parameter values (papermill batch)",
        description="Execute NOTEBOOK with papermill for every combination of the -p values "
        "(cartesian product, in order), each in its own folder OUT/NAME=VALUE,...; a notebook "
        "parameter OUT_DIR is set to that folder. OUT/summary.csv gets one row per run with its "
        "status, time and final metrics (the run's summary.json, else the last row of its "
        "metrics.csv). Runs finished by an earlier sweep into OUT are skipped. Exit status 1 "
        "if a run failed.",
    )
    sweep.add_argument("notebook", help="notebook to run (give it before the -p options)")
    sweep.add_argument(
        "-p",
        "--parameter",
        nargs="+",
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a swept parameter and its values; each VALUE is read as a Python literal when "
        "it is one (repeat -p for more parameters)",
    )
    sweep.add_argument("--out", default="outputs/sweep", help="sweep folder (default: %(default)s)")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs, run nothing")
    sweep.add_argument("--force", action="store_true", help="rerun runs that already finished")
    sweep.add_argument("--kernel", default=None, help="Jupyter kernel (default: the notebook's)")
    sweep.set_defaults(run=_sweep)
    return parser


def main(argv=None):
    """Entry point of the ``spml-lab`` console script.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    status : int
        Exit status: 0 on success, 1 when a sweep had failing runs, 2 on bad input.
    """
    args = build_parser().parse_args(argv)
    try:
        status = args.run(args)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"spml-lab {args.command}: error: {error}", file=sys.stderr)
        return 2
    return status or 0


def _make_data(args):
    from spml_lab import make_data

    options = {} if args.difficulty is None else {"difficulty": args.difficulty}
    root = make_data.write_dataset(
        args.out,
        kind=args.kind,
        num_train=args.train,
        num_val=args.val,
        size=args.size,
        seed=args.seed,
        superpixel_method=args.superpixel_method,
        overwrite=args.overwrite,
        progress=not args.quiet,
        **options,
    )
    print(f"wrote {root}")


def _literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word is a string


def _run_notebook(args):
    from spml_lab import runner

    parameters = {name: _literal(value) for name, value in args.parameter}
    executed = runner.run_notebook(args.notebook, args.out, parameters)
    print(f"wrote {executed} and its figures in {executed.parent / 'figures'}")


def _train(args):
    from spml_lab import config, train

    run = train.fit(config.from_arguments(args))
    print(f"wrote {run} (final.pt, metrics.csv)")


def _sweep(args):
    import functools
    from pathlib import Path

    from spml_lab import sweep

    grid = []
    for name, *values in args.parameter:
        if not values:
            raise ValueError(f"-p {name}: give at least one value (-p NAME V1 V2 ...)")
        grid.append((name, [_literal(value) for value in values]))
    if args.dry_run:
        runs = sweep.plan(args.notebook, grid, args.out, force=args.force)
        for run in runs:
            print(f"{run.name}: {'skipped (done)' if run.done else 'would run'}")
        print(f"{sum(not r.done for r in runs)} of {len(runs)} runs would run in {args.out}")
        return
    runs = sweep.run_sweep(
        args.notebook,
        grid,
        args.out,
        force=args.force,
        kernel_name=args.kernel,
        echo=functools.partial(print, flush=True),  # progress shows at once, even when piped
    )
    print()
    print(sweep.format_table(runs))
    failed = [run for run in runs if run.status == "failed"]
    for run in failed:
        print(f"{run.name}: {run.error}")
    print(f"wrote {Path(args.out) / sweep.TABLE}")
    if failed:  # after the table is written: a batch job sees the failure in its exit status
        print(f"spml-lab sweep: {len(failed)} of {len(runs)} runs failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
