"""Swin Transformer (Liu et al., "Swin Transformer: Hierarchical Vision
Transformer using Shifted Windows", ICCV 2021, arXiv:2103.14030).

Layout and numerics of timm's ``SwinTransformer``
(github.com/huggingface/pytorch-image-models ``timm/models/swin_transformer.py``,
``swin_tiny_patch4_window7_224``): a patch embedding (conv, kernel = stride =
patch size) with LayerNorm; four stages, stage i > 0 starting with patch
merging (2x2 neighbours concatenated in timm's order, LayerNorm, a linear map
4C -> 2C without bias); pre-norm blocks with window attention over
non-overlapping ``window x window`` windows, every odd block of a stage on
windows shifted by ``window // 2`` (a cyclic roll plus the -100 attention mask
between regions that were not neighbours), a learned relative position bias
per head, an MLP (GELU) and stochastic depth rising linearly from 0 over all
blocks; a final LayerNorm, global average pooling and the linear heads.
LayerNorm eps 1e-5 (torch's default), qkv with bias. When a stage's feature
map is no larger than the window, the window shrinks to the map and the block
does not shift (timm's and the original code's rule), so Swin-T at 224 px has
7x7 windows over 56/28/14/7-sided maps and its last stage attends globally.

Parameter names: ``patch_embed``, ``patch_norm``; ``stage{i}_merge/{norm,
reduction}`` for i > 0; ``stage{i}_block{j}`` with ``norm1``,
``attn/{qkv,proj,relative_position_bias_table}``, ``norm2``, ``fc1``, ``fc2``;
``norm``; ``heads/{name}``. With Swin-T's sizes the parameter count equals
timm's ``swin_tiny_patch4_window7_224``.

Unlike timm, feature maps whose side exceeds the window but is not a multiple
of it (timm pads them) and odd sides at a patch merging (timm pads) are
refused with a ``ValueError``.
"""

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from automix_jax.models import _heads
from automix_jax.models import vit

Array = jax.Array
Dtype = Any

# timm's mask value between tokens of different regions of a shifted window.
_MASK_VALUE = -100.0


def window_partition(x: Array, window: int) -> Array:
  """``[B, H, W, C] -> [B, (H/w)(W/w), w*w, C]``, windows in row-major order
  (jax or numpy arrays)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // window) * (w // window), window * window, c)


def window_reverse(x: Array, window: int, h: int, w: int) -> Array:
  """Inverse of ``window_partition``: ``[B, nW, w*w, C] -> [B, H, W, C]``."""
  b, c = x.shape[0], x.shape[-1]
  x = x.reshape(b, h // window, w // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def relative_position_index(window: int) -> np.ndarray:
  """``[w*w, w*w]`` int: index into the ``(2w-1)^2`` bias table (timm's)."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window),
                                indexing="ij")).reshape(2, -1)      # [2, M]
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
  rel = rel + (window - 1)
  return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
  """``[nW, M, M]`` float32: 0 within a region, -100 across regions.

  After the cyclic roll by ``-shift``, a window at the bottom/right edge holds
  tokens from up to four regions of the unrolled map; they must not attend to
  each other (timm's ``get_attn_mask``).
  """
  region = np.zeros((h, w), np.float32)
  cnt = 0
  for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
    for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
      region[hs, ws] = cnt
      cnt += 1
  windows = window_partition(region[None, :, :, None], window)[0, :, :, 0]
  diff = windows[:, None, :] - windows[:, :, None]
  return np.where(diff != 0, _MASK_VALUE, 0.0).astype(np.float32)


def stage_windows(side_h: int, side_w: int, window: int) -> tuple[int, int]:
  """``(window, shift)`` of a stage's shifted blocks on an ``h x w`` map.

  timm's rule (``always_partition=False``): a map no larger than the window
  is one window and is not shifted. Only square windows are supported, so a
  map smaller than the window must be square.
  """
  if max(side_h, side_w) <= window:
    if side_h != side_w:
      raise ValueError(
          f"a {side_h}x{side_w} feature map smaller than the window ({window}) "
          "would need a non-square window; use square images.")
    return side_h, 0
  if side_h % window or side_w % window:
    raise ValueError(
        f"a {side_h}x{side_w} feature map is larger than the window "
        f"({window}) but not a multiple of it (timm would pad); choose an "
        "image size whose feature maps divide by `window_size`.")
  return window, window // 2


class WindowAttention(nn.Module):
  """Window attention with a learned relative position bias per head.

  ``[B, nW, M, C]`` windows (M = window^2) and an optional mask ``[nW, M, M]``
  -> ``([B, nW, M, C], [B, nW, heads, M, M] float32)``.
  """
  num_heads: int
  window: int
  attention_dropout_rate: float = 0.0
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, windows: Array, mask: Optional[np.ndarray], *,
               train: bool):
    size = (2 * self.window - 1) ** 2
    name = "relative_position_bias_table"
    if (self.has_variable("params", name) and
        self.get_variable("params", name).shape != (size, self.num_heads)):
      raise ValueError(
          "the image size gives this stage another window than at "
          "initialisation (its relative position bias table has another "
          "size); re-initialise for this image size.")
    table = self.param(name, nn.initializers.truncated_normal(0.02),
                       (size, self.num_heads), self.param_dtype)
    m = self.window * self.window
    index = relative_position_index(self.window).reshape(-1)
    bias = table[index].reshape(m, m, self.num_heads).transpose(2, 0, 1)
    bias = bias[None, None]                               # [1, 1, heads, M, M]
    if mask is not None:
      bias = bias + jnp.asarray(mask)[None, :, None]      # [1, nW, 1, M, M]
    return vit.attend(windows, num_heads=self.num_heads,
                      attention_dropout_rate=self.attention_dropout_rate,
                      dropout_rate=self.dropout_rate, train=train, bias=bias,
                      dtype=self.dtype, param_dtype=self.param_dtype)


class SwinBlock(vit.Block):
  """(Shifted-)window transformer block, ``[B, H, W, C] -> ([B, H, W, C],
  attention [B, nW, heads, M, M])``; the attention is in the rolled frame
  when ``shift > 0``. ViT's block fields plus the window side and shift."""
  window: int = 7
  shift: int = 0

  @nn.compact
  def __call__(self, x: Array, *, train: bool):
    _, h, w, c = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = nn.LayerNorm(epsilon=1e-5, name="norm1", **kw)(x)
    s = self.shift
    mask = None
    if s:
      y = jnp.roll(y, (-s, -s), axis=(1, 2))
      mask = shifted_window_mask(h, w, self.window, s)
    y, attn = WindowAttention(self.num_heads, self.window,
                              self.attention_dropout_rate, self.dropout_rate,
                              name="attn", **kw)(
                                  window_partition(y, self.window), mask,
                                  train=train)
    y = window_reverse(y, self.window, h, w)
    if s:
      y = jnp.roll(y, (s, s), axis=(1, 2))
    x = x + vit.drop_path(self, y, self.drop_path_rate, train)
    y = vit.mlp(nn.LayerNorm(epsilon=1e-5, name="norm2", **kw)(x),
                ratio=self.mlp_ratio, dropout_rate=self.dropout_rate,
                train=train, **kw)
    x = x + vit.drop_path(self, y, self.drop_path_rate, train)
    return x, attn


class PatchMerging(nn.Module):
  """``[B, H, W, C] -> [B, H/2, W/2, 2C]``: 2x2 neighbours concatenated in
  timm's order ((0,0), (1,0), (0,1), (1,1) as (row, col) offsets),
  LayerNorm(4C), linear 4C -> 2C without bias."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
    x = x.reshape(b, h // 2, w // 2, 4 * c)
    x = nn.LayerNorm(epsilon=1e-5, name="norm", dtype=self.dtype,
                     param_dtype=self.param_dtype)(x)
    return nn.Dense(2 * c, use_bias=False, name="reduction",
                    kernel_init=vit.dense_init, dtype=self.dtype,
                    param_dtype=self.param_dtype)(x)


class Swin(nn.Module):
  """Swin Transformer classifier with the automix_jax model contract.

  ``apply(variables, images, train=...)`` with ``images`` ``[B, H, W, C]``
  (H, W divisible by ``patch_size``; see the module docstring for the window
  constraints) returns

  * ``"logits"``: ``{head: [B, num_classes] float32}`` on ``"pooled"``;
  * ``"stages"``: the output of each stage, ``[B, h_s, w_s, D * 2^s]`` with
    ``h_s = H / (patch_size * 2^s)`` (s = 0..3 for Swin-T); the last one after
    the final LayerNorm (the tokens the heads average), the others raw;
  * ``"pooled"``: ``[B, D * 2^(S-1)]`` float32, the mean of the last stage;
  * ``"token_attention"``: ``[B, h_last, w_last]`` float32, a per-token
    importance from the last block: its window attention averaged over heads
    and over the queries of each window (the attention each token receives),
    mapped back to the grid and normalised to sum to 1. Swin has no CLS
    token, so there is no ``"cls_attention"``; at 224 px Swin-T's last stage
    is one 7x7 window, so this is the global attention each token receives.
    ``return_attention=True`` (per-block attention for Token-Label
    Alignment) raises ``ValueError``: window attention and patch merging do
    not give one token-to-token map per block (docs/interfaces.md).

  Attributes:
    num_classes: classes per head.
    width: embedding multiplier: ``D = num_heads[0] * max(1, round(embed_dim
      * width / num_heads[0]))``; stage s has ``D * 2^s`` channels, which must
      divide by ``num_heads[s]``.
    heads: classifier head names.
    patch_size: patch side.
    embed_dim: D at width 1.
    depths: blocks per stage.
    num_heads: attention heads per stage.
    window_size: window side.
    mlp_ratio: MLP hidden size / channels.
    dropout_rate: dropout in the MLP and after the attention projection
      (timm's ``proj_drop_rate``).
    attention_dropout_rate: dropout on attention weights.
    drop_path_rate: stochastic depth, linearly from 0 over all blocks
      (timm's per-block ``linspace(0, rate, sum(depths))``).
    dtype: compute dtype; logits and attention are float32.
    param_dtype: parameter dtype.
  """
  num_classes: int
  width: float = 1.0
  heads: Sequence[str] = ("one",)
  patch_size: int = 4
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window_size: int = 7
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def dim(self) -> int:
    """Stage-0 channels D after the ``width`` multiplier."""
    h0 = self.num_heads[0]
    return h0 * max(1, int(round(self.embed_dim * self.width / h0)))

  @property
  def num_feature_stages(self) -> int:
    """Stages ``feature_mix`` is called after (1..len(depths); 0 the input)."""
    return len(self.depths)

  def check_config(self) -> None:
    """Raises ``ValueError`` on invalid fields (no compute)."""
    vit.check_transformer_fields(self)
    _heads.check_positive_int(self.window_size, "window_size")
    for arg in ("depths", "num_heads"):
      value = getattr(self, arg)
      if (not isinstance(value, (tuple, list)) or not value or any(
          isinstance(v, bool) or not isinstance(v, int) or v < 1
          for v in value)):
        raise ValueError(f"`{arg}` must be a non-empty tuple of positive "
                         f"ints; got {value!r}.")
    if len(self.depths) != len(self.num_heads):
      raise ValueError(
          f"`depths` and `num_heads` need one entry per stage; got "
          f"{self.depths!r} and {self.num_heads!r}.")
    d = self.dim
    for s, nh in enumerate(self.num_heads):
      if (d * 2 ** s) % nh:
        raise ValueError(
            f"stage {s} has {d * 2 ** s} channels (D = {d} after `width`), "
            f"which `num_heads[{s}]` = {nh} does not divide; change `width` "
            "or `num_heads`.")

  def stage_grids(self, hh: int, ww: int) -> list:
    """``[(h_s, w_s, window_s, shift_s)]`` per stage for an ``hh x ww`` image;
    ``ValueError`` for sizes the windows or the patch merging cannot take."""
    p = self.patch_size
    if hh % p or ww % p:
      raise ValueError(
          f"`images` height and width must be divisible by patch_size={p}; "
          f"got {hh}x{ww}.")
    h, w = hh // p, ww // p
    out = []
    for s in range(len(self.depths)):
      if s:
        if h % 2 or w % 2:
          raise ValueError(
              f"`images` of {hh}x{ww} give a {h}x{w} map at stage {s}'s "
              "patch merging, which needs even sides (timm would pad).")
        h, w = h // 2, w // 2
      try:
        window, shift = stage_windows(h, w, self.window_size)
      except ValueError as e:
        raise ValueError(f"`images` of {hh}x{ww}, stage {s}: {e}") from None
      out.append((h, w, window, shift))
    return out

  @nn.compact
  def __call__(self, images: Array, *, train: bool,
               feature_mix: Callable[[int, Array], Array] | None = None,
               return_attention: bool = False) -> dict:
    """Forward pass; see the class docstring for shapes.

    ``feature_mix(stage, x) -> x'`` is applied to the input images (stage 0)
    and to the ``[B, h_s, w_s, C_s]`` map after every stage s = 1..S (for
    s = S before the final LayerNorm).
    """
    b, hh, ww, _ = _heads.check_images(images)
    _heads.check_feature_mix(feature_mix)
    if _heads.check_return_attention(return_attention):
      raise ValueError(
          "`return_attention=True` is not available for Swin: its window "
          "attention and patch merging give no token-to-token map per block "
          "(Token-Label Alignment needs a ViT with a CLS token). Use "
          "out['token_attention'] for a per-token importance.")
    self.check_config()
    grids = self.stage_grids(hh, ww)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = vit.patch_embed(images, dim=self.dim, patch_size=self.patch_size,
                        feature_mix=feature_mix, **kw)
    x = nn.LayerNorm(epsilon=1e-5, name="patch_norm", **kw)(x)
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths))
    stages = []
    attn = None
    block = 0
    for s, (depth, nh) in enumerate(zip(self.depths, self.num_heads)):
      if s:
        x = PatchMerging(name=f"stage{s}_merge", **kw)(x)
      _, _, window, shift = grids[s]
      for j in range(depth):
        x, attn = SwinBlock(
            nh, self.mlp_ratio, self.dropout_rate,
            self.attention_dropout_rate, float(rates[block]),
            window=window, shift=shift if j % 2 else 0,
            name=f"stage{s}_block{j}", **kw)(x, train=train)
        block += 1
      x = _heads.mix_features(feature_mix, s + 1, x)
      stages.append(x)
    x = nn.LayerNorm(epsilon=1e-5, name="norm", **kw)(x)
    stages[-1] = x
    pooled = _heads.global_avg_pool(x)
    logits = _heads.LinearHeads(tuple(self.heads), self.num_classes,
                                name="heads", **kw)(pooled)
    h, w, window, shift = grids[-1]
    last_shift = shift if (self.depths[-1] - 1) % 2 else 0
    # Attention each token receives, averaged over heads and the queries of
    # its window, back on the (un-rolled) grid.
    received = jnp.mean(attn, axis=(2, 3))[..., None]           # [B, nW, M, 1]
    grid = window_reverse(received, window, h, w)[..., 0]
    if last_shift:
      grid = jnp.roll(grid, (last_shift, last_shift), axis=(1, 2))
    return {
        "logits": logits,
        "stages": tuple(stages),
        "pooled": pooled,
        "token_attention": _heads.normalize_map(grid),
    }


PRESETS = {
    # Swin-T (timm swin_tiny_patch4_window7_224): 28.3M parameters at 1000
    # classes, 7x7 stage-4 maps (x32) at 224 px.
    "swin_tiny": dict(patch_size=4, embed_dim=96, depths=(2, 2, 6, 2),
                      num_heads=(3, 6, 12, 24), window_size=7),
}
