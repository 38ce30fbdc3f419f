"""Notebook jobs: run a notebook headlessly with parameters, sweep a grid of runs, read claims.

"Batch" elsewhere in spml_lab means a minibatch of images; the jobs here are sweeps of whole
runs (`runner` through papermill, `sweep` over a grid, `parallel` side by side or on Slurm,
`claims` from a seeded benchmark's rows).
"""
