"""Answer generation and the MT-Bench and FLASK judges."""
