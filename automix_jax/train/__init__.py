"""Training: train state, losses, optimizers, EMA, methods and the loop.

Submodules are imported on demand (``from automix_jax.train import loop``) so
that importing one method never pulls in the others.
"""
