"""Retrain-and-evaluate cycles: the promotion gate and the model registry."""
