"""The ``spml-lab`` command.

Sub-commands are thin: each parses its arguments and calls one library function.

* ``spml-lab make-data OUT``: write a synthetic dataset in the SPML list-file layout.
* ``spml-lab prepare voc VOCDEVKIT --out DATA``: the same layout from a Pascal VOC download
  (`voc.prepare_voc`), optionally with SBD (``--sbd``) and ScribbleSup (``--scribbles``).
* ``spml-lab prepare densepose DENSEPOSE_DIR --images COCO --out DATA``: the same layout from
  the DensePose-COCO annotations and the COCO images (`densepose.prepare_densepose`).
* ``spml-lab run-notebook NOTEBOOK``: execute a notebook with papermill, keep it and its figures.
* ``spml-lab train [--config run.yaml] [--FIELD VALUE ...]``: stage-1 training (`train.fit`); one
  flag per `config.TrainConfig` field. Under ``torchrun --nproc-per-node N -m spml_lab.cli train``
  it trains data-parallel (`distributed`).
* ``spml-lab cam-labels DATA --kind tags|boxes``: CAM pseudo labels to train tags/boxes runs on.
* ``spml-lab sweep NOTEBOOK -p NAME V1 V2 ...``: one papermill run per combination, results in
  OUT/summary.csv (`sweep`).
* ``spml-lab evaluate RUN_DIR``: mIoU of kNN, softmax, softmax + CRF (and stage 2) on a split,
  written to RUN_DIR/eval/ (`evaluate.evaluate_run`).
* ``spml-lab predict CHECKPOINT IMAGE...``: coloured masks ``<stem>_mask.png`` (`predict.predict`).
* ``spml-lab stage2 RUN_DIR``: pseudo labels and the stage-2 head, RUN_DIR/stage2.pt
  (`stage2.fit_head`).
* ``spml-lab segment IMAGE --scribbles S.png --out MASK.png``: one image segmented from its own
  scribbles by SPML, the random forest or partial CE (`one_image.segment`).
"""

from __future__ import annotations

import argparse
import ast
import sys

from spml_lab import checks, devices

__all__ = ["main", "build_parser"]

# what the commands change of the library's defaults: a person at a terminal sees progress bars
AT_THE_COMMAND_LINE = {"progress": True}


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
    for add in (_add_make_data, _add_run_notebook, _add_train, _add_sweep, _add_evaluate,
                _add_predict, _add_stage2, _add_cam_labels, _add_prepare, _add_demo,
                _add_segment):  # fmt: skip
        add(commands)
    return parser


def _add_make_data(commands):
    from spml_lab.data import synthetic

    data = commands.add_parser(
        "make-data",
        help="write a synthetic dataset (images, masks, superpixels, every weak-label kind)",
        description="Generate synthetic scenes and write them in the SPML list-file layout.",
    )
    data.add_argument("out", help="output folder (created; must be empty or absent)")
    data.add_argument("--kind", default="objects", choices=["objects", "parts"])
    count = checks.flag(int, 1)
    data.add_argument("--train", type=count, default=2000, help="number of training images")
    data.add_argument("--val", type=count, default=500, help="number of validation images")
    data.add_argument(
        "--test",
        type=checks.flag(int, 0),
        default=0,
        help="images of a held-out test split (default: none)",
    )
    data.add_argument(
        "--size",
        type=checks.flag(int, synthetic.MIN_SIZE),
        default=128,
        help=f"image side in pixels, at least {synthetic.MIN_SIZE}",
    )
    data.add_argument("--seed", type=checks.flag(int, 0), default=0, help="same seed, same dataset")
    data.add_argument(
        "--difficulty",
        type=checks.flag(float, 0, 1),
        default=None,
        help="0 = clean scenes, 1 = hardest (default: generator's)",
    )
    data.add_argument(
        "--object-scale",
        type=checks.flag(float, 0.25, 3),  # the range synthetic.generate draws in
        default=None,
        help="factor on object radii in [0.25, 3], objects kind (default: generator's, 1)",
    )
    _add_superpixel_arguments(data, "slic", "the method's")
    data.add_argument("--overwrite", action="store_true", help="allow a non-empty output folder")
    data.add_argument("--quiet", action="store_true", help="no progress bar")
    data.set_defaults(run=_make_data)


def _add_superpixel_arguments(parser, method, count):
    """--superpixels N and --superpixel-method, with the command's own defaults."""
    parser.add_argument(
        "--superpixels",
        type=checks.flag(int, 1),
        default=None,
        metavar="N",
        help=f"about N superpixels per image (slic / watershed; default: {count})",
    )
    parser.add_argument(
        "--superpixel-method",
        default=method,
        help="slic | felzenszwalb | quickshift | watershed (default: %(default)s)",
    )


def _add_run_notebook(commands):
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


def _add_train(commands):
    from spml_lab.training import config, presets

    train = commands.add_parser(
        "train",
        help="train the embedding (stage 1): relations + softmax head, checkpoints, resume",
        description="Train an SPML embedding network. Every TrainConfig field is a flag; "
        "precedence: defaults < --config YAML < flags. --resume continues a killed run.",
    )
    config.add_arguments(train)
    train.add_argument(
        "--preset",
        choices=["auto", *presets.PRESETS],
        default=None,
        help="start from a named preset, under the --config file and the flags: 'benchmark' = "
        "the embedded benchmark's runs (the defaults for "
        f"{presets.PRESETS['benchmark']['max_steps']} steps), 'cpu' = the same for "
        f"{presets.PRESETS['cpu']['max_steps']} steps, 'gpu' = ResNet-101 at 512 px, 'auto' = "
        "gpu with CUDA, else cpu (default: none, TrainConfig's defaults: the calibrated recipe "
        "of the embedded data)",
    )
    train.set_defaults(run=_train)


def _add_sweep(commands):
    sweep = commands.add_parser(
        "sweep",
        help="run a notebook once per combination of parameter values (papermill batch)",
        description="Execute NOTEBOOK with papermill for every combination of the -p values "
        "(cartesian product, in order), each in its own folder OUT/NAME=VALUE,...; a notebook "
        "parameter OUT_DIR is set to that folder. OUT/summary.csv gets one row per run with its "
        "status, time and final metrics (the run's summary.json, else the last row of its "
        "metrics.csv). Runs finished by an earlier sweep into OUT are skipped. OUT belongs to "
        "the notebook that swept it (OUT/sweep.json): another notebook, or a grid that "
        "leaves out its runs, is refused unless --force. Exit status 1 if a run failed. "
        "With --jobs N, N runs go side by side, each pinned to one of --devices (round-robin) "
        "and to 1/N of the CPU threads; --executor slurm submits each run as a Slurm job "
        "through submitit.",
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
    sweep.add_argument(
        "--force",
        action="store_true",
        help="rerun runs that already finished; let this notebook or grid take over a folder "
        "that another sweep owns (that sweep's runs of the same names are replaced)",
    )
    sweep.add_argument("--kernel", default=None, help="Jupyter kernel (default: the notebook's)")
    from spml_lab.sweeps import parallel as executors  # stdlib imports only: cheap here

    parallel = sweep.add_argument_group("parallel runs")
    parallel.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="runs at a time; each gets 1/N of the CPU threads (OMP_NUM_THREADS when set, else "
        "the cores) (default: one per --devices, else 1)",
    )
    parallel.add_argument(
        "--devices",
        nargs="+",
        default=None,
        metavar="DEVICE",
        help="cpu or cuda:N, each once; the --jobs slots take them round-robin and a run sees "
        "only its GPU (CUDA_VISIBLE_DEVICES; a DEVICE notebook parameter is set to cuda:0 or "
        "cpu); --jobs must be a multiple of their number",
    )
    parallel.add_argument(
        "--executor",
        choices=executors.EXECUTORS,
        default=None,
        help="inline: this process, one run at a time; local: a process per run (submitit's "
        "local executor); slurm: a Slurm job per run, at most --jobs at a time, logs in "
        "OUT/submitit (default: inline for one job, else local)",
    )
    slurm = sweep.add_argument_group("Slurm (with --executor slurm)")
    slurm.add_argument(
        "--slurm-partition", default=None, metavar="NAME", help="partition of every job"
    )
    slurm.add_argument(
        "--slurm-time",
        type=int,
        default=None,
        metavar="MINUTES",
        help="time limit of each run (required with --executor slurm)",
    )
    slurm.add_argument("--slurm-gpus-per-node", type=int, default=None, metavar="N")
    slurm.add_argument(
        "--slurm-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other submitit SlurmExecutor parameter, e.g. cpus_per_task=8, account=lab, "
        "mem=32G (repeat for more)",
    )
    sweep.set_defaults(run=_sweep)


def _add_evaluate(commands):
    from spml_lab.prediction.evaluate import EvaluateOptions
    from spml_lab.training import config

    evaluate = commands.add_parser(
        "evaluate",
        help="score a trained run's predictions (kNN, softmax, +CRF, stage 2) on a split",
        description="Predict every image of a split with each method and compare with its "
        "dense ground truth (the 'full' annotation list). Writes RUN_DIR/eval/metrics.json "
        "and RUN_DIR/eval/per_class.csv and prints mIoU and pixel accuracy per method.",
    )
    evaluate.add_argument(
        "run_dir", help="a finished `spml-lab train` run folder, or shipped:NAME (a shipped run)"
    )
    evaluate.add_argument(
        "--out",
        default=None,
        help="folder for the scores instead of the run's eval*/ (needed for a shipped run, "
        "shipped:NAME, which is read-only)",
    )
    config.add_field_arguments(evaluate, EvaluateOptions, EvaluateOptions(**AT_THE_COMMAND_LINE))
    evaluate.set_defaults(run=_evaluate)


def _add_predict(commands):
    predict = commands.add_parser(
        "predict",
        help="write coloured masks <image stem>_mask.png for images (softmax head + CRF)",
        description="Segment images with a trained run's softmax head (the stage-2 head when "
        "the run folder has stage2.pt), flip-averaged and refined by a dense CRF, and write "
        "each mask in the notebooks' class colours as <image stem>_mask.png. A mask never "
        "replaces an input: such a run is refused before anything is written.",
    )
    predict.add_argument(
        "checkpoint", help="a run folder or its final.pt, or shipped:NAME (a shipped run)"
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG)")
    predict.add_argument(
        "--out", default=None, help="folder for the masks (default: beside each image)"
    )
    predict.add_argument(
        "--crf",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="refine with a dense CRF (default: on)",
    )
    predict.add_argument(
        "--head",
        choices=["auto", "stage1", "stage2"],
        default="auto",
        help="which softmax head: auto = stage 2 when stage2.pt exists (default)",
    )
    predict.add_argument(
        "--max-side",
        type=checks.flag(int, 0),
        default=None,
        help="decode and label larger images at this many pixels on the longer side, then "
        "bring the mask back to full size (bounded memory for any JPEG: 1.3 GiB at most for "
        "10000 x 10000 with the CRF; 0 = full resolution; default: "
        "spml_lab.prediction.predict.MAX_SIDE, 896)",
    )
    predict.add_argument(
        "--max-pixels",
        type=checks.flag(int, 1),
        default=None,
        help="refuse images with more pixels, a guard against decompression bombs (default: "
        "Pillow's limit, 178,956,970 = 2 x PIL.Image.MAX_IMAGE_PIXELS)",
    )
    predict.add_argument("--device", default=devices.DEFAULT, help=devices.HELP)
    predict.set_defaults(run=_predict)


def _add_stage2(commands):
    from spml_lab.prediction.stage2 import Stage2Options
    from spml_lab.training import config

    stage2 = commands.add_parser(
        "stage2",
        help="pseudo labels for the training images, then a softmax head trained on them",
        description="Make pseudo labels (tag-restricted softmax, random walk, dense CRF) for "
        "the run's training images and train a fresh softmax head on them with the "
        "embedding frozen; writes RUN_DIR/stage2.pt (then `spml-lab evaluate` reports "
        "stage2_crf).",
    )
    stage2.add_argument(
        "run_dir", help="a finished `spml-lab train` run folder, or shipped:NAME (a shipped run)"
    )
    stage2.add_argument(
        "--out",
        default=None,
        help="copy the run into this folder and write stage2.pt there (needed for a shipped "
        "run, shipped:NAME, which is read-only)",
    )
    config.add_field_arguments(stage2, Stage2Options, Stage2Options(**AT_THE_COMMAND_LINE))
    stage2.set_defaults(run=_stage2)


def _add_cam_labels(commands):
    from spml_lab.labelling import tag_training as labels  # the classifier's defaults

    cam = commands.add_parser(
        "cam-labels",
        help="CAM pseudo labels of a data folder's tags or boxes (annotation cam_tags/cam_boxes)",
        description="Train the tag classifier on the folder's training tags, then write CAM "
        "pseudo labels for the split (lists/{split}_cam_{kind}.txt), which `spml-lab train "
        "--annotation cam_tags` (or cam_boxes) trains on, as the paper does for tags and boxes.",
    )
    cam.add_argument("data", help="a folder written by `spml-lab make-data`")
    cam.add_argument("--kind", choices=("tags", "boxes"), default="tags")
    cam.add_argument("--splits", nargs="+", default=["train"], help="splits to label")
    cam.add_argument("--steps", type=checks.flag(int, 1), default=labels.CLASSIFIER_STEPS,
                     help="classifier steps (%(default)s)")  # fmt: skip
    cam.add_argument("--batch-size", type=checks.flag(int, 1), default=labels.CLASSIFIER_BATCH_SIZE,
                     help="images per step (%(default)s)")  # fmt: skip
    cam.add_argument("--lr", type=checks.flag(float, 1e-12), default=labels.CLASSIFIER_LR,
                     help="Adam learning rate (%(default)s)")  # fmt: skip
    cam.add_argument("--width", type=checks.flag(int, 2), default=labels.CLASSIFIER_WIDTH,
                     help="classifier channels (%(default)s)")  # fmt: skip
    cam.add_argument(
        "--crop-size",
        type=checks.flag(int, 16),
        default=None,
        help="train the classifier on random crops of this size (with rescaling and flips); "
        "needed when the images differ in size, as VOC's do (default: whole images)",
    )
    cam.add_argument("--seed", type=int, default=0)
    cam.add_argument("--device", default=devices.DEFAULT, help=devices.HELP)
    cam.set_defaults(run=_cam_labels)


def _add_prepare(commands):
    prepare = commands.add_parser(
        "prepare",
        help="write a real dataset's download in the project's layout (prepare voc ...)",
        description="Turn a dataset download into a folder every command reads (dataset.json, "
        "images, dense labels, superpixels, points, scribbles, boxes, tags, list files).",
    )
    targets = prepare.add_subparsers(dest="target", required=True, metavar="DATASET")
    voc = targets.add_parser(
        "voc",
        help="Pascal VOC 2012 (+ SBD's train_aug, + ScribbleSup scribbles)",
        description="Read VOCdevkit/VOC2012 (JPEGImages, SegmentationClass, SegmentationObject, "
        "Annotations, ImageSets/Segmentation) and write the dataset folder OUT: splits train, "
        "val and, with --sbd, train_aug (10,582 images). Boxes and tags come from the XML "
        "files; points from the scribbles' middle points (--scribbles) or from the masks. "
        "An interrupted prepare continues where it stopped; a finished one is skipped.",
    )
    voc.add_argument("devkit", metavar="VOCDEVKIT", help="the VOCdevkit folder (or its VOC2012)")
    voc.add_argument("--out", required=True, help="dataset folder to write (new or empty)")
    voc.add_argument("--sbd", default=None, metavar="DIR", help="SBD's dataset folder (cls/*.mat)")
    voc.add_argument(
        "--scribbles", default=None, metavar="DIR", help="folder of ScribbleSup's {id}.xml files"
    )
    voc.add_argument(
        "--workers",
        type=checks.flag(int, 1),
        default=None,
        help="parallel processes (default: CPUs, at most 4)",
    )
    _add_superpixel_arguments(voc, "watershed", "64 watershed seeds")
    voc.add_argument(
        "--seed", type=checks.flag(int, 0), default=0, help="placement of points made from masks"
    )
    voc.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave images with a bad file out and list them in OUT/bad_images.json",
    )
    voc.add_argument("--quiet", action="store_true", help="no progress bar")
    voc.set_defaults(run=_prepare_voc)
    _add_prepare_densepose(targets)


def _add_prepare_densepose(targets):
    densepose = targets.add_parser(
        "densepose",
        help="DensePose-COCO: body parts of COCO persons, one point per annotated part",
        description="Read the DensePose-COCO annotation files (densepose_coco_2014_*.json) and "
        "the COCO 2014 images, and write the dataset folder OUT: 15 classes (background + 14 "
        "body parts from dp_masks), points (one per annotated part of each person, from dp_x, "
        "dp_y, dp_I), superpixels, splits train and val. An interrupted prepare continues "
        "where it stopped; a finished one is skipped.",
    )
    densepose.add_argument(
        "annotations", metavar="DENSEPOSE_DIR", help="folder of the densepose_coco_2014_*.json"
    )
    densepose.add_argument(
        "--images", required=True, metavar="COCO_DIR",
        help="COCO images: the folder holding train2014/ and val2014/",
    )  # fmt: skip
    densepose.add_argument("--out", required=True, help="dataset folder to write (new or empty)")
    densepose.add_argument(
        "--split", nargs=2, action="append", metavar=("NAME", "JSON"), default=None,
        help="a split and its annotation file (in DENSEPOSE_DIR, or a path); repeat for more. "
        "Default: train densepose_coco_2014_train.json, val densepose_coco_2014_minival.json",
    )  # fmt: skip
    densepose.add_argument(
        "--workers", type=checks.flag(int, 1), default=None,
        help="parallel processes (default: CPUs, at most 4)",
    )  # fmt: skip
    _add_superpixel_arguments(densepose, "watershed", "64 watershed seeds")
    densepose.add_argument(
        "--point-radius", type=checks.flag(int, 0), default=None,
        help="disc radius of the points, kept to their part (default 3)",
    )  # fmt: skip
    densepose.add_argument(
        "--skip-bad", action="store_true",
        help="leave images with a bad file out and list them in OUT/bad_images.json",
    )  # fmt: skip
    densepose.add_argument("--quiet", action="store_true", help="no progress bar")
    densepose.set_defaults(run=_prepare_densepose)


def _add_demo(commands):
    demo = commands.add_parser(
        "demo",
        help="the method end to end: SPML against partial cross-entropy on the embedded scribbles",
        description="Train SPML and the partial cross-entropy baseline briefly on the embedded "
        "scribbles (same network and recipe), score both on the val images, and draw them with "
        "the shipped 1000-step runs: OUT/spml_vs_baseline.png and OUT/results.md.",
    )
    demo.add_argument("--out", default="outputs/demo", help="output folder (%(default)s)")
    demo.add_argument("--steps", type=int, default=200, help="steps per run (%(default)s)")
    demo.add_argument("--stage2-steps", type=int, default=100, help="SPML stage 2 (%(default)s)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--images", type=int, default=4, help="val images drawn (%(default)s)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)


def _add_segment(commands):
    from spml_lab.prediction import one_image

    segment = commands.add_parser(
        "segment",
        help="segment one image from scribbles drawn on it (SPML trained on that image alone)",
        description="Train on IMAGE alone from its scribbles and write the mask: SPML (a small "
        "embedding net, low-level similarity + semantic annotation, nearest labelled "
        "prototypes), scikit-image's random forest on a filter bank, or partial cross-entropy. "
        "Nothing is written when an input is wrong, and no output replaces an input.",
    )
    segment.add_argument("image", help="the picture (JPEG, PNG); ~128-256 px is seconds on a CPU")
    segment.add_argument(
        "--scribbles", required=True,
        help="single-channel PNG of IMAGE's size: class ids 0..K-1, 255 = unlabelled",
    )  # fmt: skip
    segment.add_argument(
        "--out", required=True, help="the mask: single-channel PNG, ids 0..K-1 (palette colours)"
    )
    segment.add_argument("--overlay", default=None, help="also write the mask over the image")
    segment.add_argument("--method", choices=one_image.METHODS, default="spml")
    segment.add_argument(
        "--steps", type=checks.flag(int, 1), default=one_image.RECIPE.steps,
        help="training steps of spml and partial_ce (default: %(default)s)",
    )  # fmt: skip
    segment.add_argument("--seed", type=checks.flag(int, 0), default=0, help="same seed, same mask")
    segment.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    segment.set_defaults(run=_segment)


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
    except (FileNotFoundError, FileExistsError, ValueError, FloatingPointError) as error:
        print(f"spml-lab {args.command}: error: {error}", file=sys.stderr)
        return 2
    return status or 0


def _make_data(args):
    from spml_lab.data import make_data

    options = {
        name: value
        for name, value in (("difficulty", args.difficulty), ("object_scale", args.object_scale))
        if value is not None
    }
    root = make_data.write_dataset(
        args.out,
        kind=args.kind,
        num_train=args.train,
        num_val=args.val,
        num_test=args.test,
        size=args.size,
        seed=args.seed,
        superpixel_method=args.superpixel_method,
        superpixel_options=None if args.superpixels is None else {"n_segments": args.superpixels},
        overwrite=args.overwrite,
        progress=not args.quiet,
        **options,
    )
    print(f"wrote {root}")


def _prepare_voc(args):
    from spml_lab.data import voc

    options = None if args.superpixels is None else {"n_segments": args.superpixels}
    prepared = voc.prepare_voc(
        args.devkit, args.out, sbd=args.sbd, scribbles=args.scribbles, workers=args.workers,
        superpixel_method=args.superpixel_method, superpixel_options=options, seed=args.seed,
        skip_bad=args.skip_bad, progress=not args.quiet,
    )  # fmt: skip
    return _report_prepared(prepared)


def _report_prepared(prepared):
    """Print what a prepare did (`prepare_folder.Prepared`); return the exit status."""
    from spml_lab.data import prepare_folder

    if prepared.skipped:
        print(f"{prepared.root} is already prepared (dataset.json exists); nothing to do")
    splits = ", ".join(f"{name} {count}" for name, count in prepared.splits.items())
    print(f"{prepared.root}: {splits} images")
    if prepared.bad:
        report = prepared.root / prepare_folder.BAD_REPORT
        print(f"left out {len(prepared.bad)} bad images: see {report}")
    return 0


def _prepare_densepose(args):
    from pathlib import Path

    from spml_lab.data import densepose

    pairs = args.split or densepose.DEFAULT_SPLITS.items()
    annotations = {name: Path(args.annotations) / path for name, path in pairs}
    options = None if args.superpixels is None else {"n_segments": args.superpixels}
    radius = {} if args.point_radius is None else {"point_radius": args.point_radius}
    prepared = densepose.prepare_densepose(
        annotations, args.images, args.out, workers=args.workers,
        superpixel_method=args.superpixel_method, superpixel_options=options,
        skip_bad=args.skip_bad, progress=not args.quiet, **radius,
    )  # fmt: skip
    return _report_prepared(prepared)


def _literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word is a string


def _run_notebook(args):
    from spml_lab.sweeps import runner

    parameters = {name: _literal(value) for name, value in args.parameter}
    executed = runner.run_notebook(args.notebook, args.out, parameters)
    print(f"wrote {executed} and its figures in {executed.parent / 'figures'}")


def _demo(args):
    from spml_lab.classroom import end_to_end

    for name in ("steps", "stage2_steps", "images"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    end_to_end.run_demo(
        args.out, steps=args.steps, stage2_steps=args.stage2_steps, seed=args.seed,
        images=args.images, progress=not args.quiet,
    )  # fmt: skip
    print(f"wrote {args.out}/spml_vs_baseline.png and {args.out}/results.md")


def _train(args):
    from spml_lab.training import config, presets, train

    if args.preset is None:
        cfg = config.from_arguments(args)
    else:  # the preset fills what neither the --config file nor a flag says
        cfg = presets.preset_config(args.preset, **config.given_fields(args))
    # --resume at the command line asks for a run to continue: a folder without one is a typo
    run = train.fit(cfg, start_if_empty=False)
    print(f"wrote {run} (final.pt, metrics.csv)")


def _cam_labels(args):
    from spml_lab.data import datasets, writers
    from spml_lab.labelling import label_files, tag_training

    crops = {} if args.crop_size is None else {"train": True, "crop_size": args.crop_size}
    tags = datasets.from_folder(args.data, "train", "tags", seed=args.seed, **crops)
    for split in args.splits:  # a missing split is named before the classifier trains
        datasets.from_folder(args.data, split, args.kind)
    with writers.one_writer(args.data):  # before training: a second writer learns at once
        net = tag_training.train_tag_classifier(
            tags, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
            width=args.width, device=args.device, progress=True,
        )  # fmt: skip
        for split in args.splits:
            path = label_files.write_pseudo_labels(net, args.data, split, args.kind)
            print(f"wrote {path}")


def _sweep(args):
    import functools
    from pathlib import Path

    from spml_lab.sweeps import parallel, sweep

    grid = []
    for name, *values in args.parameter:
        if not values:
            raise ValueError(f"-p {name}: give at least one value (-p NAME V1 V2 ...)")
        grid.append((name, [_literal(value) for value in values]))
    slurm = _slurm_options(args)
    if args.dry_run:
        parallel.check_options(args.jobs, args.devices, args.executor, slurm)
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
        jobs=args.jobs,
        devices=args.devices,
        executor=args.executor,
        slurm=slurm,
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


def _slurm_options(args):
    """Collect the --slurm-* flags as submitit SlurmExecutor parameters."""
    options = {
        name: value
        for name, value in (
            ("partition", args.slurm_partition),
            ("time", args.slurm_time),
            ("gpus_per_node", args.slurm_gpus_per_node),
        )
        if value is not None
    }
    for item in args.slurm_option:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise ValueError(f"--slurm-option {item!r}: give KEY=VALUE, e.g. cpus_per_task=8")
        if key in options:
            raise ValueError(f"--slurm-option {key}: given twice (or also as --slurm-{key})")
        options[key] = _literal(value)
    return options


def _evaluate(args):

    from spml_lab.prediction import evaluate
    from spml_lab.training import config

    options = config.field_values(args, evaluate.EvaluateOptions)
    results = evaluate.evaluate_run(
        args.run_dir, out=args.out, **{**AT_THE_COMMAND_LINE, **options}
    )
    print(f"{results['split']}: {results['images']} images, {results['seconds']:.1f} s")
    print(f"{'method':<12} {'mIoU':>7} {'pixel acc':>10}")
    for method in results["methods"]:
        scores = results[method]
        print(f"{method:<12} {scores['miou']:>7.4f} {scores['pixel_accuracy']:>10.4f}")
    # the folder written (eval_test/ for --split test), as evaluate_run chose it
    folder = evaluate.scores_folder(results["config"]["run"], results["split"], args.out)
    print(f"wrote {folder / 'metrics.json'} and {folder / 'per_class.csv'}")
    return 0


def _predict(args):
    import os
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from spml_lab.data import labelio
    from spml_lab.pictures import viz
    from spml_lab.prediction import predict
    from spml_lab.training import runs

    run = runs.load_run(args.checkpoint, device=args.device)
    head = run.head
    if args.head == "stage2" and run.stage2_head is None:
        raise FileNotFoundError(f"--head stage2: {run.path / runs.STAGE2} not found")
    if args.head != "stage1" and run.stage2_head is not None:
        head = run.stage2_head

    def identity(path):  # (device, inode): the same under every name, hard links included
        try:
            stat = os.stat(path)
        except OSError:  # not there (yet)
            return None
        return stat.st_dev, stat.st_ino

    # every path resolved (``..``, absolute spellings and symlinks meet) and checked before
    # anything is written: a mask may replace neither an input nor another mask
    inputs = {Path(name).resolve(): name for name in args.images}
    files = {identity(name): name for name in args.images}  # Pillow truncates in place
    files.pop(None, None)
    targets = {}  # resolved mask file -> the image it is the mask of, as the user wrote it
    for name in args.images:
        folder = Path(args.out) if args.out else Path(name).parent
        target = (folder / f"{Path(name).stem}_mask.png").resolve()
        replaced = inputs.get(target) or files.get(identity(target))
        if replaced:
            raise ValueError(
                f"the mask of {name} would be {target}, which replaces the input image "
                f"{replaced}; rename it or predict into another --out folder"
            )
        if target in targets:
            raise ValueError(
                f"{targets[target]} and {name} would both write {target}; predict them into "
                "different --out folders or rename one"
            )
        targets[target] = name
    for name in targets.values():  # header only: a missing or huge file fails before writing
        labelio.image_size(name, max_pixels=args.max_pixels)
    # the notebooks' class colours, unlabelled white (`viz.colorize`), as a PNG palette: the
    # full-size mask is colourised by Pillow from uint8 labels, no index or RGB copy in numpy
    table = viz.colorize(np.arange(256), viz.palette(run.num_classes))  # (256, 3) uint8
    max_side = predict.MAX_SIDE if args.max_side is None else args.max_side or None  # 0: full
    for target, name in targets.items():
        labels = predict.predict_file(run.net, head, name, max_side=max_side,
                                      max_pixels=args.max_pixels, crf=args.crf)  # fmt: skip
        mask = Image.fromarray(labels)  # (H, W) uint8, mode "L"
        mask.putpalette(table.ravel().tolist())  # mode "P": each class index gets its colour
        target.parent.mkdir(parents=True, exist_ok=True)
        mask.convert("RGB").save(target, format="PNG")
        print(f"wrote {target}")
    return 0


def _segment(args):
    import os
    from pathlib import Path

    from PIL import Image

    from spml_lab.data import labelio
    from spml_lab.pictures import viz
    from spml_lab.prediction import one_image

    def same(a, b):  # the same file under any name (symlinks, hard links, ..)
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)

    outputs = {"--out": args.out, **({"--overlay": args.overlay} if args.overlay else {})}
    if args.overlay and Path(args.out).resolve() == Path(args.overlay).resolve():
        raise ValueError(f"--out and --overlay are both {args.out}; give two files")
    for flag, target in outputs.items():
        for name, source in (("IMAGE", args.image), ("--scribbles", args.scribbles)):
            if Path(target).resolve() == Path(source).resolve() or same(target, source):
                raise ValueError(f"{flag} {target} would replace the input {name} {source}")
        if os.path.exists(target) and not args.overwrite:
            raise FileExistsError(f"{flag} {target} exists; pass --overwrite to replace it")
    image = labelio.read_image(args.image)  # (H, W, 3) float in [0, 1]
    scribbles = labelio.read_label_png(args.scribbles)  # (H, W) uint8
    # checked with the file names, before any training
    image, scribbles, num_classes = one_image.check_inputs(
        image, scribbles, names=(args.image, args.scribbles)
    )
    mask = one_image.segment(image, scribbles, args.method, steps=args.steps, seed=args.seed)
    labelio.write_label_png(args.out, mask)
    print(f"wrote {args.out} ({args.method}, {num_classes} classes)")
    if args.overlay:
        blended = viz.overlay(image, mask, viz.palette(num_classes), alpha=0.5)
        Path(args.overlay).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(blended).save(args.overlay, format="PNG")
        print(f"wrote {args.overlay}")
    return 0


def _stage2(args):
    from spml_lab.prediction import stage2
    from spml_lab.training import config

    options = config.field_values(args, stage2.Stage2Options)
    result = stage2.fit_head(args.run_dir, out=args.out, **{**AT_THE_COMMAND_LINE, **options})
    quality = "n/a (no dense ground truth)"
    if result.pseudo_miou is not None:
        quality = f"{result.pseudo_miou:.4f}"
    print(f"pseudo labels of {result.images} training images: mIoU {quality}")
    print(f"stage-2 head: final loss {result.loss:.4f}; wrote {result.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
