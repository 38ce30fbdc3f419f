"""The classroom: a demo batch to draw relations on, the exercise checks, the lessons' steps."""
