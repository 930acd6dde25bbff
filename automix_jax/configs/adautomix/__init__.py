"""AdAutoMix (ICLR 2024) configs (``get_config(arg)``); see docs/learned_mixing.md."""
