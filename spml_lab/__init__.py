"""spml_lab: pixel-to-segment contrastive learning for weakly supervised segmentation.

The package follows the pipeline, one layer per folder; a module imports only from its own
layer or the layers below it (checked by ``lint-imports``)::

    cli                  the spml-lab command
    classroom/  sweeps/  lesson_batch, exercises, lessons, figures, end_to_end (spml-lab demo) /
                         runner (notebooks through papermill), sweep, claims
    pictures/            viz, embedding_viz, embedding_stats, explorer, arrays
    prediction/          knn, probabilities, pseudo_labels, stage2, predict, crf, metrics,
                         evaluate
    training/            config, presets, train, checkpoints, runs, run_folders
    labelling/           tag_training, cam, label_files (CAM pseudo labels for tags and boxes)
    method/  nets/       clustering, losses, relations, memory, distributed, label_maps /
                         embedding_nets, heads, resnet, build, tag_classifier
    data/                textures, synthetic, annotations, superpixels, labelio, datasets, writers,
                         make_data, voc_files, voc (spml-lab prepare voc)
    constants checks     IGNORE_INDEX and the annotation kinds / range checks /
    devices schedules    the device default / learning rate per step, data order per epoch

Notebooks import a module with the prefix that names its file, e.g.
``from spml_lab.method import relations`` then ``relations.spml_loss(...)``.
"""

# The one place the version is written: pyproject.toml reads it from here (setuptools' `attr`,
# statically), so keep it a plain string literal.
__version__ = "0.1.0"
