"""The classroom: a demo batch to draw relations on, and the notebooks' exercise checks."""
