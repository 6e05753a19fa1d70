"""tunefold: a versioned pipeline that curates instruction data, fine-tunes with LoRA and evaluates with judges."""

__version__ = "0.1.0"
