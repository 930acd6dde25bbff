"""AdAutoMix (ICLR 2024) configs: ``get_config(arg)`` files, see docs/learned_mixing.md."""
