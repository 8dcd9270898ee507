"""Compute-node side: data, models, data-parallel backends and the training loop."""
