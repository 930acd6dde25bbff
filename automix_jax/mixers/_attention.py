"""Shared pieces of the attention-guided mixers for vision transformers.

TransMix, TokenMix, SMMix, MixPro and TL-Align work on the model's token grid:
an image of ``H x W`` pixels cut into ``p x p`` patches gives ``h = H / p`` by
``w = W / p`` tokens (row-major, as ViT flattens them). They read attention
either as a model input passed to the mixer (``token_attention`` ``[B, h, w]``
from a clean forward pass) or from the outputs of the forward pass on the
mixed images, inside the ``relabel(out)`` function they return
(docs/interfaces.md, "Model-aware mixers"). Labels are data: every attention
read here is put behind ``stop_gradient``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from automix_jax.mixers import _common as C

Array = jax.Array


def check_token_attention(token_attention: Any, batch_size: int, height: int,
                          width: int, *, method: str) -> tuple[int, int]:
  """``token_attention`` ``[B, h, w]`` floating on a grid that tiles the
  image (``H % h == 0``, ``W % w == 0``); returns ``(h, w)``."""
  shape = getattr(token_attention, "shape", None)
  dtype = getattr(token_attention, "dtype", None)
  ok = (shape is not None and len(shape) == 3 and shape[0] == batch_size and
        min(shape) >= 1 and dtype is not None and
        jnp.issubdtype(dtype, jnp.floating))
  if ok and (height % shape[1] or width % shape[2] or
             shape[1] * shape[2] < 2):
    ok = False
  if not ok:
    got = (f"shape {tuple(shape)}, dtype {dtype}" if shape is not None
           else type(token_attention).__name__)
    raise ValueError(
        f"{method}: `token_attention` must be floating [B, h, w] with B = "
        f"{batch_size}, at least 2 tokens, on a token grid that tiles the "
        f"{height}x{width} images (H % h == 0 and W % w == 0): each image's "
        "attention per token from a clean forward pass (the ViT/DeiT or Swin "
        f"output \"token_attention\"); got {got}.")
  return int(shape[1]), int(shape[2])


def normalized(maps: Array) -> Array:
  """Non-negative maps ``[B, ...]`` scaled to sum 1 per sample (0 stays 0)."""
  maps = jnp.maximum(maps.astype(jnp.float32), 0.0)
  axes = tuple(range(1, maps.ndim))
  total = jnp.sum(maps, axis=axes, keepdims=True)
  return maps / jnp.where(total > 0, total, 1.0)


def model_output(out: Any, key: str, *, method: str, form: str,
                 ndim: int) -> Array:
  """``out[key]`` of a forward pass, checked; a refusal names the method.

  The models that return each key are listed in docs/interfaces.md
  ("Models"); a ResNet returns none of the attention outputs.
  """
  if not isinstance(out, dict):
    raise ValueError(f"{method}: `relabel` takes the model's output dict of "
                     f"the forward pass on the mixed images; got "
                     f"{type(out).__name__}.")
  if key not in out:
    raise ValueError(
        f"{method} needs the model output {key!r} {form} from the forward "
        f"pass on the mixed images (ViT/DeiT models return it"
        + (", called with return_attention=True" if key == "attention" else "")
        + f"); this model's output has {sorted(out)}.")
  value = out[key]
  if getattr(value, "ndim", None) != ndim:
    raise ValueError(f"{method}: model output {key!r} must be {form}; got "
                     f"shape {getattr(value, 'shape', None)}.")
  return jax.lax.stop_gradient(value).astype(jnp.float32)


def cls_attention(out: Any, *, method: str) -> Array:
  """The head mean of the last block's CLS -> patch attention, ``[B, N]``
  (TransMix's ``attn[:, :, 0, 1:].mean(1)``), behind ``stop_gradient``."""
  attn = model_output(out, "cls_attention", method=method,
                      form="[B, heads, N]", ndim=3)
  return jnp.mean(attn, axis=1)


def token_grid(num_tokens: int, height: int, width: int, *, method: str,
               arg: str) -> tuple[int, int]:
  """The ``(h, w)`` grid of square ``p x p`` patches giving ``num_tokens``
  tokens on ``H x W`` images (``p = sqrt(H W / N)``), or ``ValueError``
  naming ``arg``."""
  patch = math.isqrt(height * width // num_tokens) if num_tokens else 0
  if (not patch or patch * patch * num_tokens != height * width or
      height % patch or width % patch):
    raise ValueError(
        f"{method}: the model gives {num_tokens} tokens for {height}x{width} "
        f"images, not a grid of square patches; {arg} cannot be placed on "
        "its tokens.")
  return height // patch, width // patch


def nearest_tokens(mask: Array, grid_h: int, grid_w: int) -> Array:
  """A pixel mask ``[B, H, W(, 1)]`` sampled on the token grid, ``[B, h*w]``.

  PyTorch's ``nn.Upsample(size=(h, w))`` (mode ``"nearest"``), which TransMix
  and MixPro use, reads source pixel ``floor(i H / h)``: for whole patches,
  each patch's top-left pixel.
  """
  if mask.ndim == 4:
    mask = mask[..., 0]
  height, width = mask.shape[1:3]
  rows = (jnp.arange(grid_h) * height) // grid_h
  cols = (jnp.arange(grid_w) * width) // grid_w
  tokens = mask[:, rows][:, :, cols]
  return tokens.reshape(mask.shape[0], grid_h * grid_w).astype(jnp.float32)


def attention_share(attention: Array, weights: Array) -> tuple[Array, Array]:
  """``sum(weights * a) / sum(a)`` per sample over tokens ``[B, N]``, and
  ``[B]`` bool, False where the attention sums to 0 (no share defined)."""
  total = jnp.sum(attention, axis=-1)
  share = jnp.sum(weights * attention, axis=-1) / jnp.where(total > 0, total,
                                                             1.0)
  return jnp.clip(share, 0.0, 1.0), total > 0


def relabeled(labels: Array, lam: Array, index: Array, aux: dict,
              **extra: Array) -> tuple[Array, dict]:
  """``(lam y + (1 - lam) y[index], aux with the final lam and extra)``."""
  lam = jnp.clip(lam.astype(jnp.float32), 0.0, 1.0)
  return C.mix_labels(labels, lam, index), {**aux, "lam": lam, **extra}
