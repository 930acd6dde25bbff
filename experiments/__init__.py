"""Entry points (``python -m experiments.train``)."""
