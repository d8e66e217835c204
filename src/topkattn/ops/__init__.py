"""Operators: Top-k attention (`ops.topk`) and top-k selection (`ops.select`)."""
