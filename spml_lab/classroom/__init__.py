"""The classroom: a lesson batch to draw relations on, the exercise checks, the lessons' steps."""
