"""Config files: each exposes ``get_config(arg=None)`` (ml_collections)."""
