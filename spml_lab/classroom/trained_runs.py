"""Looking at trained runs in the lessons (09 to 11): what each network does on the same images.

The lessons on training, embeddings and evaluation compare networks: an untrained one, the
partial cross-entropy baseline, SPML with scribbles or points, a minute-long run against the
shipped 1000-step one. These are the steps they share, as library calls:

* `lesson_folder`: where a lesson writes (a temporary folder unless the user names one);
* `loss_summary`: a run's logged losses in a few numbers, for a sweep's table;
* `compared_runs`: the runs a lesson compares, shipped ones or tiny ones trained on the spot,
  all from the one recipe (`presets`), and `describe_runs` to tabulate them;
* `embed_and_score`: one network's embedding and head labels on the same val images, with the
  class gap of its embedding and the mIoU of its head;
* `compare_embeddings`: each network's cosines and silhouettes on the same pixels;
* `umap_sample`: the pixels and segment prototypes of training images a UMAP shows;
* `failure_cases`: the val images a predictor labels worst, and its largest confusion there;
* `shipped_record`: what ``make sample-runs`` recorded for a shipped run (its training time).

The pictures of these numbers are `spml_lab.classroom.figures` and `spml_lab.pictures`.
"""

from __future__ import annotations

import csv
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spml_lab.classroom import lesson_batch
from spml_lab.constants import ANNOTATIONS
from spml_lab.nets import embedding_nets
from spml_lab.pictures import embedding_stats, embedding_viz
from spml_lab.prediction import evaluate, metrics, predict
from spml_lab.training import presets, runs, train
from spml_lab.training.config import TrainConfig

__all__ = [
    "lesson_folder",
    "loss_summary",
    "COMPARED",
    "compared_runs",
    "describe_runs",
    "slug",
    "compare_embeddings",
    "Embedded",
    "embed_and_score",
    "umap_sample",
    "Failure",
    "failure_cases",
    "shipped_record",
]


def lesson_folder(out_dir, topic):
    """Return the folder a lesson writes into: `out_dir`, or a new temporary folder.

    Parameters
    ----------
    out_dir : str or Path
        The lesson's ``OUT_DIR`` parameter; ``""`` (or None) = a new temporary folder, so a
        lesson run from the course never writes into the working directory.
    topic : str
        Names the temporary folder (``spml_<topic>_...``) after what the lesson does.

    Returns
    -------
    folder : Path
        Created if needed.

    Examples
    --------
    >>> lesson_folder("", "embeddings").name.startswith("spml_embeddings_")
    True
    """
    folder = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix=f"spml_{topic}_"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def loss_summary(run):
    """Sum up a run's logged losses: where they ended, and how far the total fell.

    Parameters
    ----------
    run : str or Path
        A run folder with ``metrics.csv`` and ``config.yaml`` (or ``"shipped:NAME"``).

    Returns
    -------
    summary : dict of str to float or int
        ``steps`` (the last logged step); ``final_NAME`` for each enabled relation's loss,
        ``total`` and ``softmax_ce`` in the last row; ``total_first_quarter`` and
        ``total_last_quarter``, the mean total loss of the first and the last quarter of the
        rows (at least one row each); ``images_per_s``, the mean training speed without the
        first row (which pays for the start-up), unless it is the only one. Flat, as
        `spml_lab.sweeps.runner.write_summary` takes it.

    Examples
    --------
    >>> summary = loss_summary("shipped:spml_scribbles")
    >>> summary["steps"], summary["total_last_quarter"] < summary["total_first_quarter"]
    (1000, True)
    """
    history = runs.read_metrics(run)
    cfg = TrainConfig.from_yaml(runs.run_folder(run) / runs.CONFIG)
    total, speed = history["total"], history["images_per_s"]
    quarter = max(1, len(total) // 4)
    finals = [*cfg.relation_settings(), "total", "softmax_ce"]
    return {
        "steps": int(history["step"][-1]),
        **{f"final_{name}": float(history[name][-1]) for name in finals},
        "total_first_quarter": float(total[:quarter].mean()),
        "total_last_quarter": float(total[-quarter:].mean()),
        "images_per_s": float((speed[1:] if len(speed) > 1 else speed).mean()),
    }


# The trained networks the embedding lesson compares: its shipped run (`make sample-runs`, the
# benchmark's 1000 steps) and what turns the recipe into it. The baseline sees the same
# scribbles as SPML; only the relations and the head differ.
COMPARED = {
    "baseline (partial CE)": (
        "baseline_scribbles",
        {"annotation": "scribbles", **presets.PARTIAL_CROSS_ENTROPY},
    ),
    "SPML scribbles": ("spml_scribbles", {"annotation": "scribbles"}),
    "SPML points": ("spml_points", {"annotation": "points"}),
}


def slug(name):
    """Turn a compared network's name into a folder or summary name.

    Examples
    --------
    >>> slug("baseline (partial CE)"), slug("SPML scribbles")
    ('baseline', 'spml_scribbles')
    """
    return name.split(" (")[0].replace(" ", "_").lower()


def compared_runs(named="shipped", *, out_dir, device="cpu", **fields):
    """Load the runs of `COMPARED`; train a tiny one for each that `named` leaves out.

    Parameters
    ----------
    named : "shipped" or dict of str to str, optional
        ``"shipped"``: every run of `COMPARED` is its shipped run. A dict maps some of
        `COMPARED`'s names to runs (``"shipped:NAME"`` or a folder); ``""`` or ``{}`` trains
        all three.
    out_dir : str or Path
        Where tiny runs go, one folder each (``baseline``, ``spml_scribbles``...). A second
        call with the same settings reloads them (``resume``) instead of training again.
    device : str, optional
        Where the loaded networks live.
    **fields
        `TrainConfig` fields of the tiny runs, on top of the ``"cpu"`` preset (``data``,
        ``max_steps``, ``crop_size``, ``width``, ``seed``...).

    Returns
    -------
    runs : dict of str to runs.Run
        In `COMPARED`'s order.

    Raises
    ------
    ValueError
        If `named` names a run `COMPARED` does not hold.

    Examples
    --------
    >>> shipped = compared_runs("shipped", out_dir="unused")
    >>> [(run.cfg.annotation, run.step) for run in shipped.values()]
    [('scribbles', 1000), ('scribbles', 1000), ('points', 1000)]
    """
    if named == "shipped":
        named = {name: runs.SHIPPED + shipped for name, (shipped, _) in COMPARED.items()}
    named = dict(named or {})
    unknown = sorted(set(named) - set(COMPARED))
    if unknown:
        raise ValueError(f"runs {unknown} are not compared here; name some of {list(COMPARED)}")
    steps = fields.get("max_steps") or presets.PRESETS["cpu"]["max_steps"]
    # tiny runs: full speed after a few steps, four loss rows, no progress bar in a lesson
    tiny = {"batch_size": 4, "warmup_steps": min(5, steps), "log_every": max(1, steps // 4),
            "progress": False, "resume": True}  # fmt: skip
    loaded = {}
    for name, (_, changes) in COMPARED.items():
        if name in named:
            folder = runs.run_folder(named[name])
        else:
            out = str(Path(out_dir) / slug(name))
            folder = train.fit(
                presets.preset_config("cpu", **{**tiny, **fields, **changes, "out_dir": out})
            )
        loaded[name] = runs.load_run(folder, device=device)
    return loaded


def describe_runs(loaded):
    """One row per run: what it trained with and for how long.

    Parameters
    ----------
    loaded : dict of str to runs.Run

    Returns
    -------
    rows : list of dict
        ``model``, ``annotation``, ``relations`` (or how the baseline trains), ``steps`` and
        ``folder``: ready for printing or a DataFrame.
    """
    return [
        {
            "model": name,
            "annotation": run.cfg.annotation,
            "relations": ", ".join(run.cfg.relation_settings()) or "none (head CE into the net)",
            "steps": run.step,
            "folder": str(run.path),
        }
        for name, run in loaded.items()
    ]


@dataclass
class Embedded:
    """One network's view of a batch of images.

    Attributes
    ----------
    embeddings : (B, h, w, D) float tensor
        Unit rows, channels last, on the CPU.
    labels : (B, H, W) int64 tensor
        The softmax head's argmax at the images' size (no flip, no CRF), on the CPU.
    within, across : float
        Mean cosine of pixel pairs of the same class and of different classes
        (`lesson_batch.similarity_within_across` on the truth at the embedding's resolution).
    miou : float
        The head's mean IoU on the images (one confusion matrix over all of them).
    """

    embeddings: torch.Tensor
    labels: torch.Tensor
    within: float
    across: float
    miou: float

    @property
    def gap(self):
        """``within - across``: how far the embedding has pulled the classes apart."""
        return self.within - self.across

    @property
    def scores(self):
        """The numbers as a dict (``within``, ``across``, ``gap``, ``miou``), for a table."""
        return {"within": self.within, "across": self.across, "gap": self.gap, "miou": self.miou}


def embed_and_score(net, head, images, truth, *, scale=1.0, batch_size=8):
    """Embed images, label them with the head, and score both against the ground truth.

    Parameters
    ----------
    net : torch.nn.Module
        Embedding network (put in eval mode).
    head : heads.SoftmaxHead
        Its softmax head (put in eval mode).
    images : (B, 3, H, W) float tensor in [0, 1]
    truth : (B, H, W) int64 tensor
        Dense ground truth, 255 = not scored.
    scale : float, optional
        Resize the images by it first: the scale the network trained at (a GPU run brings
        the embedded 96 px scenes to its crop size); the labels come back at (H, W).
    batch_size : int, optional
        Images per forward pass.

    Returns
    -------
    embedded : Embedded

    Examples
    --------
    >>> from spml_lab.nets import heads
    >>> net, head = embedding_nets.SmallEmbeddingNet(8, 8), heads.SoftmaxHead(8, 3)
    >>> view = embed_and_score(net, head, torch.rand(2, 3, 16, 16), torch.zeros(2, 16, 16).long())
    >>> tuple(view.embeddings.shape), tuple(view.labels.shape)
    ((2, 4, 4, 8), (2, 16, 16))
    """
    net, head = net.eval(), head.eval()
    size = tuple(images.shape[-2:])  # the labels come back at the ground truth's size
    if scale != 1.0:
        images = F.interpolate(images, scale_factor=scale, mode="bilinear")
    emb = torch.cat([embedding_nets.embed(net, chunk) for chunk in images.split(batch_size)])
    with torch.no_grad():
        labels = head(emb, size=size).argmax(1).cpu()  # (B, H, W)
    emb = emb.float().cpu()
    # the truth at the embedding's resolution, nearest: every class keeps its label
    classes = F.interpolate(truth[:, None].double(), size=emb.shape[1:3])[:, 0].long()
    within, across = lesson_batch.similarity_within_across(emb, classes)
    num_classes = head.classifier.out_channels
    miou = metrics.mean_iou(metrics.confusion_matrix(labels, truth, num_classes))[0]
    return Embedded(emb, labels, within, across, miou)


def compare_embeddings(batches, *, samples=2000, class_names=None, seed=0):
    """Sample each network's pixels, every class about equally often, and measure them.

    Parameters
    ----------
    batches : dict of str to lesson_batch.LessonBatch
        Per network, the same images embedded (`lesson_batch.make_batch`).
    samples : int, optional
        Pixels drawn per network (`embedding_stats.sample_pixels` with ``balance=True``:
        otherwise the background, most pixels, would dominate every number).
    class_names : list of str, optional
    seed : int, optional
        The same for every network, so their numbers compare.

    Returns
    -------
    rows : list of dict
        `embedding_stats.compare_embeddings`: per network its silhouette, mean same- and
        different-class cosines, their gap, and the silhouette of each class.
    distributions : dict of str to (ndarray, ndarray)
        Per network, the same- and different-class cosines of random pixel pairs
        (`embedding_stats.cosine_distributions`).
    """
    pairs = {}
    for name, batch in batches.items():
        drawn = embedding_stats.sample_pixels(
            batch.embeddings, batch.truth, num_samples=samples, balance=True, seed=seed
        )
        pairs[name] = (drawn["vectors"], drawn["classes"])
    rows = embedding_stats.compare_embeddings(pairs, class_names=class_names, seed=seed)
    distributions = {
        name: embedding_stats.cosine_distributions(*pair, seed=seed) for name, pair in pairs.items()
    }
    return rows, distributions


def umap_sample(net, data, annotation, *, images=8, samples=800, seed=0):
    """Embed training images and project a class-balanced sample of them with UMAP.

    Parameters
    ----------
    net : torch.nn.Module
        Embedding network.
    data : str
        ``"embedded:KIND"`` or a data folder.
    annotation : str
        The weak labels to mark (the network's own); another kind (a CAM label) marks none.
    images : int, optional
        First training images used.
    samples : int, optional
        Pixels drawn, every class about equally often (the background would fill the picture
        otherwise); a fifth as many segment prototypes join them.
    seed : int, optional

    Returns
    -------
    points : (N, 2) float ndarray
        The UMAP coordinates (`embedding_viz.umap_project`).
    sample : dict
        The sampled pixels and prototypes (`embedding_stats.join_samples`), what
        `embedding_viz.umap_scatter` colours.
    """
    annotation = annotation if annotation in ANNOTATIONS else "tags"  # tags: no pixel marked
    seen = lesson_batch.make_batch(data, annotation, indices=range(images), net=net)
    pixels = embedding_stats.sample_pixels(
        seen.embeddings, seen.truth, annotation=seen.labels, num_samples=samples, balance=True,
        seed=seed,
    )  # fmt: skip
    prototypes = embedding_stats.sample_segments(
        seen.segments, seen.truth, num_samples=samples // 5, seed=seed
    )
    sample = embedding_stats.join_samples(pixels, prototypes)
    return embedding_viz.umap_project(sample["vectors"], random_state=seed), sample


@dataclass
class Failure:
    """One val image a predictor labels badly.

    Attributes
    ----------
    name : str
    picture : (H, W, 3) uint8 ndarray
    truth, labels : (H, W) int64 ndarray
        Ground truth and the predictor's labels.
    miou : float
        The image's own mIoU (over the classes in its truth or prediction).
    confused : (int, int)
        ``(true class, predicted class)`` of the largest confusion.
    pixels : int
        How many pixels that confusion covers.
    """

    name: str
    picture: np.ndarray
    truth: np.ndarray
    labels: np.ndarray
    miou: float
    confused: tuple
    pixels: int

    @property
    def wrong(self):
        """The fraction of the image's pixels labelled wrongly."""
        return float(np.mean(self.labels != self.truth))


def failure_cases(run, dataset, results, method, *, count=3, bank=None):
    """Find the val images `method` labels worst, label them again, name the worst confusion.

    Parameters
    ----------
    run : runs.Run
    dataset : datasets.SegmentationList
        The scored split with its dense ground truth, in the order `results` scored it.
    results : dict
        `evaluate.evaluate_run`'s results, with ``per_image_miou`` for `method`.
    method : str
        One of `evaluate.METHODS`.
    count : int, optional
        Images returned (fewer if fewer were scored).
    bank : knn.PrototypeBank, optional
        Needed for ``"knn"``.

    Returns
    -------
    failures : list of Failure
        Worst first; images with nothing scored (NaN) come last.
    """
    scores = np.array([np.nan if v is None else v for v in results[method]["per_image_miou"]])
    worst = np.argsort(scores, kind="stable")[: min(count, len(scores))]  # NaN sorts last
    batch = next(predict.image_batches(torch.utils.data.Subset(dataset, worst.tolist()), count))
    labels = evaluate.predict_methods(run, batch["image"], [method], bank=bank)[method]
    pictures = predict.to_uint8(batch["image"]).numpy()
    failures = []
    for k, index in enumerate(worst.tolist()):
        pred, truth = labels[k].numpy(), batch["label"][k].numpy()
        off = metrics.confusion_matrix(pred, truth, run.num_classes).fill_diagonal_(0)
        g, p = divmod(int(off.argmax()), run.num_classes)  # rows: truth, columns: prediction
        failures.append(Failure(dataset.names[index], pictures[k], truth, pred,
                                float(scores[index]), (g, p), int(off[g, p])))  # fmt: skip
    return failures


def shipped_record(name):
    """Return what ``make sample-runs`` recorded for a shipped run (its ``runs.csv`` row).

    Parameters
    ----------
    name : str
        A shipped run's name (``"spml_scribbles"``) or ``"shipped:NAME"``.

    Returns
    -------
    record : dict
        The run's row, numbers as floats (NaN where none was recorded): ``steps``,
        ``train_seconds`` (stage 1 on the machine that made it), ``stage2_seconds``,
        ``val_miou``...; empty when the table or the row is missing.

    Examples
    --------
    >>> shipped_record("shipped:spml_scribbles")["steps"]
    1000.0
    """
    name = str(name).removeprefix(runs.SHIPPED)
    table = runs.SHIPPED_RUNS / "runs.csv"
    if not table.is_file():
        return {}
    with table.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["run"] == name:
                return {key: _number(value) for key, value in row.items()}
    return {}


def _number(text):
    try:
        return float(text) if text != "" else math.nan
    except ValueError:
        return text  # names: the run, its annotation, its relations
