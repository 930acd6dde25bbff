"""Vision Transformer (Dosovitskiy et al., ICLR 2021, arXiv:2010.11929) in the
DeiT configuration (Touvron et al., ICML 2021, arXiv:2012.12877).

Patch embedding (a conv with kernel = stride = patch size), a CLS token, a
learned position embedding, pre-norm transformer blocks (LN -> multi-head
self-attention -> residual, LN -> MLP(GELU) -> residual, with optional
dropout and stochastic depth), a final LayerNorm, and the linear heads on the
CLS token. Sizes follow DeiT: tiny = 192-d / 3 heads, small = 384-d / 6 heads,
depth 12, patch 16, MLP ratio 4, LayerNorm eps 1e-6, qkv with bias. With these
choices the parameter count equals timm's ``deit_*_patch16_224``.

Parameter names: ``patch_embed``, ``cls_token``, ``pos_embed``, ``block{i}``
(i from 0) with ``norm1``, ``attn/{qkv,proj}``, ``norm2``, ``fc1``, ``fc2``;
``norm``; ``heads/{name}``.
"""

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from automix_jax.models import _heads

Array = jax.Array
Dtype = Any

dense_init = nn.initializers.truncated_normal(stddev=0.02)


def drop_path(module: nn.Module, x: Array, rate: float, train: bool) -> Array:
  """Stochastic depth (Huang et al. 2016): drops whole residual branches per sample."""
  if not train or rate == 0.0:
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(module.make_rng("dropout"), keep,
                              (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


def attend(x: Array, *, num_heads: int, attention_dropout_rate: float,
           dropout_rate: float, train: bool, dtype: Dtype, param_dtype: Dtype,
           bias: Array | None = None) -> tuple[Array, Array]:
  """Multi-head self-attention that also returns its weights.

  ``[..., N, D] -> ([..., N, D], [..., heads, N, N] float32)``; the weights'
  rows sum to 1 (softmax in float32, before attention dropout). Leading axes
  are batch axes (Swin passes windows ``[B, nW, M, D]``). ``bias``
  (broadcastable to ``[..., heads, N, N]``) is added to the scaled logits:
  Swin's relative position bias and shifted-window mask.

  Called inside a compact ``__call__``: ``qkv`` and ``proj`` become
  submodules of the calling module (timm's ``attn.qkv`` / ``attn.proj``).
  """
  *lead, n, d = x.shape
  hd = d // num_heads
  kw = dict(dtype=dtype, param_dtype=param_dtype, kernel_init=dense_init,
            bias_init=nn.initializers.zeros)
  qkv = nn.DenseGeneral((3, num_heads, hd), name="qkv", **kw)(x)
  q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
  logits = jnp.einsum("...qhd,...khd->...hqk", q, k) * (hd ** -0.5)
  # Softmax in float32 so bf16 attention stays normalised.
  logits = logits.astype(jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  weights = jax.nn.softmax(logits, axis=-1)
  w = nn.Dropout(attention_dropout_rate, deterministic=not train)(weights)
  out = jnp.einsum("...hqk,...khd->...qhd", w.astype(v.dtype), v)
  out = nn.Dense(d, name="proj", **kw)(out.reshape(*lead, n, d))
  out = nn.Dropout(dropout_rate, deterministic=not train)(out)
  return out, weights


def check_transformer_fields(module: nn.Module) -> None:
  """Checks the fields ViT and Swin share: sizes, ``mlp_ratio``, the rates."""
  _heads.check_positive_int(module.patch_size, "patch_size")
  _heads.check_positive_int(module.embed_dim, "embed_dim")
  if not module.mlp_ratio > 0:
    raise ValueError(f"`mlp_ratio` must be > 0; got {module.mlp_ratio!r}.")
  for arg in ("dropout_rate", "attention_dropout_rate", "drop_path_rate"):
    _heads.check_rate(getattr(module, arg), arg)


def patch_embed(images: Array, *, dim: int, patch_size: int,
                feature_mix: Any, dtype: Dtype, param_dtype: Dtype) -> Array:
  """``[B, H, W, C] -> [B, H/p, W/p, dim]``: ``feature_mix`` at stage 0, then
  a conv with kernel = stride = p (timm's ``patch_embed.proj``; a submodule
  ``patch_embed`` of the calling compact module)."""
  p = patch_size
  return nn.Conv(dim, (p, p), strides=(p, p), padding="VALID",
                 kernel_init=nn.initializers.lecun_normal(),
                 name="patch_embed", dtype=dtype, param_dtype=param_dtype)(
                     _heads.mix_features(feature_mix, 0, images.astype(dtype)))


class Attention(nn.Module):
  """Multi-head self-attention (``attend``) as a module: ``[B, N, D] ->
  ([B, N, D], [B, heads, N, N] float32)``."""
  num_heads: int
  attention_dropout_rate: float = 0.0
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool):
    return attend(x, num_heads=self.num_heads,
                  attention_dropout_rate=self.attention_dropout_rate,
                  dropout_rate=self.dropout_rate, train=train,
                  dtype=self.dtype, param_dtype=self.param_dtype)


def mlp(x: Array, *, ratio: float, dropout_rate: float, train: bool,
        dtype: Dtype, param_dtype: Dtype) -> Array:
  """The transformer MLP ``fc1 -> GELU (exact) -> dropout -> fc2 -> dropout``.

  Called inside a compact ``__call__``: ``fc1``/``fc2`` become submodules of
  the calling block (the parameter names of timm's ``mlp.fc1``/``mlp.fc2``).
  """
  d = x.shape[-1]
  dense = dict(kernel_init=dense_init, bias_init=nn.initializers.zeros,
               dtype=dtype, param_dtype=param_dtype)
  y = nn.Dense(int(d * ratio), name="fc1", **dense)(x)
  y = nn.gelu(y, approximate=False)
  y = nn.Dropout(dropout_rate, deterministic=not train)(y)
  y = nn.Dense(d, name="fc2", **dense)(y)
  return nn.Dropout(dropout_rate, deterministic=not train)(y)


class Block(nn.Module):
  """Pre-norm transformer block, ``[B, N, D] -> ([B, N, D], attention)``."""
  num_heads: int
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y, attn = Attention(self.num_heads, self.attention_dropout_rate,
                        self.dropout_rate, name="attn", **kw)(
                            nn.LayerNorm(epsilon=1e-6, name="norm1", **kw)(x),
                            train=train)
    x = x + drop_path(self, y, self.drop_path_rate, train)
    y = mlp(nn.LayerNorm(epsilon=1e-6, name="norm2", **kw)(x),
            ratio=self.mlp_ratio, dropout_rate=self.dropout_rate, train=train,
            **kw)
    x = x + drop_path(self, y, self.drop_path_rate, train)
    return x, attn


class ViT(nn.Module):
  """ViT/DeiT classifier with the automix_jax model contract.

  ``apply(variables, images, train=...)`` with ``images`` ``[B, H, W, C]``,
  ``H`` and ``W`` divisible by ``patch_size`` (h = H / p, w = W / p,
  ``num_patches`` = h * w), returns

  * ``"logits"``: ``{head: [B, num_classes] float32}`` from the CLS token;
  * ``"stages"``: patch tokens after the blocks in ``stage_blocks`` (1-based,
    default ``(depth//4, depth//2, 3*depth//4, depth)``), each ``[B, h, w, D]``.
    The entry for block ``depth`` is taken after the final LayerNorm (the
    tokens the heads see); the others are raw block outputs.
  * ``"pooled"``: ``[B, D]`` float32, the final-LayerNorm CLS token.
  * ``"cls_attention"``: ``[B, num_heads, num_patches]`` float32, the last
    block's attention from the CLS query to every patch key, per head. The
    CLS->CLS weight is *excluded*, so each row sums to ``1 - a_cls,cls <= 1``.
    The full last-block attention ``[B, num_heads, 1 + N, 1 + N]`` (rows sum
    to 1) is sown as ``intermediates/last_attention`` when ``"intermediates"``
    is mutable.
  * ``"token_attention"``: ``[B, h, w]`` float32, the head-mean of
    ``"cls_attention"`` normalised to sum to 1 over the patches: TransMix's
    attention map (Chen et al., CVPR 2022, github.com/Beckschen/TransMix
    ``transmix.py``), the per-token importance every model with attention
    returns (docs/interfaces.md, "Models").
  * with ``return_attention=True`` only: ``"attention"``: ``[B, depth, 1 + N,
    1 + N]`` float32, every block's attention weights averaged over heads
    (softmax before attention dropout; rows sum to 1; token 0 is CLS). This
    is what Token-Label Alignment tracks labels through (Xiao et al., ICCV
    2023, arXiv 2210.06455, github.com/Euphoria16/TL-Align
    ``timm/models/vision_transformer.py``): ``y_l = (A_l y_{l-1} + y_{l-1})
    / 2`` per block, the CLS row of ``y_depth`` the target. Not stopped:
    callers that use it as a label put it behind ``stop_gradient``.

  The position embedding has the size of the grid seen at init; other sizes
  raise ``ValueError`` (no interpolation).

  Attributes:
    num_classes: classes per head.
    width: embedding multiplier: ``D = num_heads * max(1, round(embed_dim *
      width / num_heads))``, so D stays divisible by ``num_heads``.
    heads: classifier head names (not attention heads; see ``num_heads``).
    patch_size: p.
    embed_dim: D at width 1.
    depth: number of blocks.
    num_heads: attention heads.
    mlp_ratio: MLP hidden size / D.
    stage_blocks: 1-based block indices whose outputs form ``"stages"``.
    dropout_rate: dropout after the position embedding, in the MLP and after
      the attention projection.
    attention_dropout_rate: dropout on attention weights.
    drop_path_rate: stochastic depth, linearly increasing from 0 to this over
      the blocks (DeiT). All rates use the 'dropout' rng, only when
      ``train`` and the rate is > 0.
    dtype: compute dtype; logits and attention are float32.
    param_dtype: parameter dtype.
  """
  num_classes: int
  width: float = 1.0
  heads: Sequence[str] = ("one",)
  patch_size: int = 16
  embed_dim: int = 192
  depth: int = 12
  num_heads: int = 3
  mlp_ratio: float = 4.0
  stage_blocks: Optional[Sequence[int]] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def dim(self) -> int:
    """The embedding width D after the ``width`` multiplier."""
    return self.num_heads * max(
        1, int(round(self.embed_dim * self.width / self.num_heads)))

  @property
  def blocks_for_stages(self) -> tuple:
    if self.stage_blocks is not None:
      return tuple(self.stage_blocks)
    d = self.depth
    return (max(1, d // 4), max(1, d // 2), max(1, 3 * d // 4), d)

  @property
  def num_feature_stages(self) -> int:
    """Stages ``feature_mix`` is called after (blocks 1..depth; 0 the input)."""
    return self.depth

  def check_config(self) -> None:
    """Raises ``ValueError`` on invalid fields (no compute)."""
    check_transformer_fields(self)
    depth = _heads.check_positive_int(self.depth, "depth")
    _heads.check_positive_int(self.num_heads, "num_heads")
    sb = self.stage_blocks
    if sb is not None and (
        not isinstance(sb, (tuple, list)) or not sb or any(
            isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= depth
            for i in sb)):
      raise ValueError(
          f"`stage_blocks` must be a non-empty tuple of block indices in "
          f"[1, depth={depth}]; got {sb!r}.")

  @nn.compact
  def __call__(self, images: Array, *, train: bool,
               feature_mix: Callable[[int, Array], Array] | None = None,
               return_attention: bool = False) -> dict:
    """Forward pass; see the class docstring for shapes.

    ``feature_mix(stage, x) -> x'`` (a model-aware mixer's, see
    docs/interfaces.md) is applied to the input images (stage 0,
    ``[B, H, W, C]``) and to the token sequence after every block s =
    1..depth (``[B, 1 + num_patches, D]``, CLS token first; for s = depth
    before the final LayerNorm), so ``"stages"`` hold mixed tokens.
    ``return_attention=True`` (a Python bool) adds ``"attention"``.
    """
    b, hh, ww, _ = _heads.check_images(images)
    _heads.check_feature_mix(feature_mix)
    _heads.check_return_attention(return_attention)
    self.check_config()
    p = self.patch_size
    if hh % p or ww % p:
      raise ValueError(
          f"`images` height and width must be divisible by patch_size={p}; "
          f"got [B, H, W, C] = {tuple(images.shape)}.")
    h, w = hh // p, ww // p
    d = self.dim
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    pos_shape = (1, 1 + h * w, d)
    if (self.has_variable("params", "pos_embed") and
        self.get_variable("params", "pos_embed").shape != pos_shape):
      raise ValueError(
          f"`images` give a {h}x{w} patch grid but the model was initialised "
          f"for {self.get_variable('params', 'pos_embed').shape[1] - 1} "
          f"patches; re-initialise for this image size.")

    x = patch_embed(images, dim=d, patch_size=p, feature_mix=feature_mix,
                    **kw).reshape(b, h * w, d)
    cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d),
                     self.param_dtype)
    pos = self.param("pos_embed", nn.initializers.truncated_normal(0.02),
                     pos_shape, self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype), x],
                        axis=1)
    x = x + pos.astype(x.dtype)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)

    to_grid = lambda t: t[:, 1:].reshape(b, h, w, d)
    wanted = self.blocks_for_stages
    outputs = {}
    attn = None
    per_block = []
    for i in range(self.depth):
      rate = (self.drop_path_rate * i / (self.depth - 1) if self.depth > 1
              else self.drop_path_rate)
      x, attn = Block(self.num_heads, self.mlp_ratio, self.dropout_rate,
                      self.attention_dropout_rate, rate, name=f"block{i}",
                      **kw)(x, train=train)
      if return_attention:
        per_block.append(jnp.mean(attn, axis=1))
      x = _heads.mix_features(feature_mix, i + 1, x)
      if i + 1 in wanted and i + 1 != self.depth:
        outputs[i + 1] = to_grid(x)
    self.sow("intermediates", "last_attention", attn)
    x = nn.LayerNorm(epsilon=1e-6, name="norm", **kw)(x)
    outputs[self.depth] = to_grid(x)
    pooled = x[:, 0].astype(jnp.float32)
    logits = _heads.LinearHeads(tuple(self.heads), self.num_classes,
                                name="heads", **kw)(pooled)
    cls_attention = attn[:, :, 0, 1:]
    out = {
        "logits": logits,
        "stages": tuple(outputs[i] for i in wanted),
        "pooled": pooled,
        "cls_attention": cls_attention,
        "token_attention": _heads.normalize_map(
            jnp.mean(cls_attention, axis=1)).reshape(b, h, w),
    }
    if return_attention:
      out["attention"] = jnp.stack(per_block, axis=1)
    return out


PRESETS = {
    # Test-sized: 4 blocks of 64-d, 2 heads, 4x4 patches (an 8x8 grid at 32 px).
    "vit_tiny": dict(patch_size=4, embed_dim=64, depth=4, num_heads=2),
    "deit_tiny": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "deit_small": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
}
