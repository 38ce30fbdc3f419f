"""Batch work: run a notebook headlessly with parameters, and sweep a grid of runs."""
