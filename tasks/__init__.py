"""One module per pipeline stage: the function doing the work and the `python -m` entry dvc.yaml calls."""
