"""tunefold: a versioned pipeline that curates instruction data, fine-tunes with LoRA and evaluates with judges."""

from tunefold.cores import share_cores

share_cores()  # before anything loads torch or llama.cpp: see tunefold/cores.py

__version__ = "0.1.0"
