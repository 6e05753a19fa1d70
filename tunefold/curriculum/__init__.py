"""Curriculum planning and synthetic data: TAPIR's task-aware curriculum and CodecLM's Self-Rubrics."""
