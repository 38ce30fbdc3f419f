"""Stage 1 training: the run's configuration, the training loop and the run folder's files."""
