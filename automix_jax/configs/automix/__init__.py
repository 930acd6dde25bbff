"""AutoMix (ECCV 2022) configs: ``get_config(arg)`` files, see docs/learned_mixing.md."""
