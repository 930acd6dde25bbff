"""Learned mask generators of AutoMix (ECCV 2022) and AdAutoMix (ICLR 2024).

Flax Linen modules that turn EMA-encoder features into per-pixel mixing masks, and
``apply_masks``, which mixes a batch under those masks in the static mixers'
contract (``automix_jax/mixers/_common.py``). Imports jax, flax and numpy only (no
optax, no tfds), so the generators are usable without the trainer.
"""

from automix_jax.generators._apply import apply_masks
from automix_jax.generators._apply import nway_blend
from automix_jax.generators._apply import nway_labels
from automix_jax.generators._apply import upsample
from automix_jax.generators._stats import mask_statistics
from automix_jax.generators.adaptive_mask import AdaptiveMask
from automix_jax.generators.pixel_mix_block import PixelMixBlock
from automix_jax.generators.pixel_mix_block import automix_scale

__all__ = ["AdaptiveMask", "PixelMixBlock", "apply_masks", "automix_scale",
           "mask_statistics", "nway_blend", "nway_labels", "upsample"]
