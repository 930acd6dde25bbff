"""SAMix (arXiv 2111.15454) configs: ``get_config(arg)`` files, see
docs/learned_mixing.md."""
