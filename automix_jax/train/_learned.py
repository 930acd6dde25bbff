"""Pieces shared by the two learned-mixing methods, AutoMix and AdAutoMix.

* AutoMix: Liu et al., "AutoMix: Unveiling the Power of Mixup for Stronger
  Classifiers", ECCV 2022, arXiv 2103.13027.
* AdAutoMix: Qin et al., "Adversarial AutoMixup", ICLR 2024, arXiv 2312.11954.

Both train three things in one step (AutoMix: OpenMixup; AdAutoMix: the authors' code):

* the online classifier (``params["classifier"]``, ``batch_stats``) with two heads,
  ``one`` (clean CE) and ``mix`` (mixed CE);
* an EMA teacher (``ema_params``, ``ema_batch_stats``), updated *only* by EMA of
  the online params after every optimizer step (CosineScheduleHook momentum); its
  BatchNorm statistics come from its own train-mode forward passes;
* a mask generator (``params["generator"]``) fed with the teacher's stage features.

One optimizer (``optax.multi_transform``) updates ``{classifier, generator}`` from
one gradient of ``L_classifier + L_generator``; the two groups receive disjoint
gradients (the classifier's mixed sample uses a stop-gradient mask, the generator
loss only reaches the generator through the frozen teacher), so this is exactly
two optimizers sharing a step, as in the reference.

State: ``automix_jax.train.state.TrainState`` with
``params = {"classifier": ..., "generator": ...}``, ``batch_stats`` the online
classifier's BN statistics, ``ema_params``/``ema_batch_stats`` the teacher's.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from automix_jax import generators
from automix_jax.generators import _apply as gen_common
from automix_jax.train import ema as ema_lib
from automix_jax.train import losses
from automix_jax.train import optim
from automix_jax.train import state as state_lib
from automix_jax.train import static
from automix_jax.train.static import all_finite

# Flax momentum of every BatchNorm in the model zoo (torch momentum 0.1,
# docs/interfaces.md). The closed-form teacher running-stat update below relies
# on it; tests compare against explicit forward passes, so a change shows.
BN_MOMENTUM = 0.9

TEACHER_BN = ("batch_stats", "running")


def cfg_dict(x: Any) -> dict:
  if x is None:
    return {}
  return dict(x.to_dict() if hasattr(x, "to_dict") else x)


def get(cfg: Any, name: str, default: Any = None) -> Any:
  if cfg is None:
    return default
  if isinstance(cfg, Mapping):
    return cfg.get(name, default)
  if hasattr(cfg, "get"):
    return cfg.get(name, default)
  return getattr(cfg, name, default)


# ----------------------------------------------------------------------------
# Config validation (static Python values; raises before any compute).
# ----------------------------------------------------------------------------


def check_positive(value: Any, arg: str) -> float:
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not math.isfinite(value) or value <= 0):
    raise ValueError(f"`{arg}` must be a finite number > 0; got {value!r}.")
  return float(value)


def check_unit(value: Any, arg: str, *, high: float = 1.0,
               high_open: bool = False) -> float:
  ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
        and 0.0 <= value and (value < high if high_open else value <= high))
  if not ok:
    bound = f"[0, {high})" if high_open else f"[0, {high}]"
    raise ValueError(f"`{arg}` must be a number in {bound}; got {value!r}.")
  return float(value)


def check_int(value: Any, arg: str, *, minimum: int) -> int:
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
      or value < minimum):
    raise ValueError(f"`{arg}` must be an integer >= {minimum}; got {value!r}.")
  return int(value)


def check_choice(value: Any, choices, arg: str) -> Any:
  if value not in choices:
    raise ValueError(f"`{arg}` must be one of {tuple(choices)}; got {value!r}.")
  return value


def generator_logit_bound(gen_cfg: Mapping, block_name: str) -> float | None:
  """``config.<block>.generator.logit_bound``: absent, None or 0 -> None (off,
  the reference), else a number > 0 (``generators`` ``logit_bound``)."""
  value = gen_cfg.get("logit_bound", None)
  if value is None or (not isinstance(value, bool) and value == 0):
    return None
  return gen_common.check_logit_bound(
      value, arg=f"{block_name}.generator.logit_bound")


def check_batch(batch: Any, *, min_size: int, what: str) -> tuple[jax.Array,
                                                                 jax.Array]:
  """``batch = {"image": [B, H, W, C] float, "label": [B] int}``; B >= min_size."""
  if not isinstance(batch, Mapping) or "image" not in batch or "label" not in batch:
    raise ValueError("`batch` must be a dict with 'image' [B, H, W, C] float and "
                     "'label' [B] int entries.")
  images, labels = batch["image"], batch["label"]
  shape = getattr(images, "shape", None)
  if shape is None or len(shape) != 4 or not jnp.issubdtype(images.dtype,
                                                             jnp.floating):
    raise ValueError(f"`batch['image']` must be float [B, H, W, C]; got "
                     f"{getattr(images, 'dtype', None)} "
                     f"{tuple(shape) if shape is not None else type(images)}.")
  lshape = getattr(labels, "shape", None)
  if (lshape is None or tuple(lshape) != (shape[0],)
      or not jnp.issubdtype(labels.dtype, jnp.integer)):
    raise ValueError(f"`batch['label']` must be int [B] = ({shape[0]},); got "
                     f"{getattr(labels, 'dtype', None)} {lshape}.")
  if shape[0] < min_size:
    raise ValueError(f"{what} needs a batch of at least {min_size} samples; got "
                     f"batch size {shape[0]}.")
  return images, labels


# ----------------------------------------------------------------------------
# Losses.
# ----------------------------------------------------------------------------


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-8
                      ) -> jax.Array:
  """``torch.nn.CosineSimilarity(dim=-1, eps)`` as current torch computes it.

  ``a·b / (max(|a|, eps) · max(|b|, eps))``: each norm is clamped separately
  (older torch clamped the product of the norms, which differs for vectors of
  norm below ~sqrt(eps); e.g. a = b = [1e-5, 0, 0] gives 1.0 here and in
  current torch, 0.01 with the product clamp).

  ``[..., K]`` x ``[..., K]`` -> ``[...]`` float32.
  """
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  dot = jnp.sum(a * b, axis=-1)
  norm_a = jnp.sqrt(jnp.sum(a * a, axis=-1))
  norm_b = jnp.sqrt(jnp.sum(b * b, axis=-1))
  return dot / (jnp.maximum(norm_a, eps) * jnp.maximum(norm_b, eps))


soft_ce = losses.soft_cross_entropy


def mask_metrics(masks: jax.Array, lam: jax.Array) -> dict:
  """``mask_<stat>`` train metrics of the generator's masks ``[B, H, W, N]``.

  ``generators.mask_statistics`` (dominance, spatial std, saturated and
  whole-image fractions, area-λ gap) of the generator's own, differentiable
  sample, which never falls back to constant λ; the loop logs them as
  ``train/mask_*`` every log step. A few reductions over the mask: negligible
  beside the step's forward and backward passes.
  """
  return {f"mask_{k}": v
          for k, v in generators.mask_statistics(masks, lam).items()}


# ----------------------------------------------------------------------------
# BatchNorm running statistics.
# ----------------------------------------------------------------------------


def repeat_stat_update(start: Any, before: Any, after_one: Any, k: int,
                       momentum: float = BN_MOMENTUM) -> Any:
  """Running stats after ``k`` more train-mode passes on batches whose statistics
  equal those of an observed pass.

  One pass maps ``r -> μ r + (1 - μ) a`` (``a``: the batch mean or biased
  variance), so ``k`` passes with the same ``a`` starting from ``s`` give
  ``μ^k s + (1 - μ^k) a``, and the observed pass ``before -> after_one`` yields
  ``(1 - μ) a = after_one - μ before``. BN batch statistics are invariant to
  permuting the batch, so the reference's k teacher passes on permutations of the
  clean batch update the running statistics exactly like this (up to rounding).

  Args:
    start: stats pytree before the k passes.
    before, after_one: stats before/after the observed pass (same structure).
    k: number of passes (>= 0).
    momentum: Flax BN momentum μ.

  Returns:
    ``μ^k start + (1 - μ^k) / (1 - μ) (after_one - μ before)``.
  """
  mk = momentum ** k
  coef = (1.0 - mk) / (1.0 - momentum)

  def upd(s, r, r1):
    a_scaled = r1 - jnp.asarray(momentum, r.dtype) * r   # (1 - μ) a
    return (jnp.asarray(mk, s.dtype) * s
            + jnp.asarray(coef, s.dtype) * a_scaled).astype(s.dtype)

  return jax.tree.map(upd, start, before, after_one)


# ----------------------------------------------------------------------------
# The shared method skeleton.
# ----------------------------------------------------------------------------


class LearnedMixingBase:
  """Model, optimizer, EMA teacher and evaluation shared by AutoMix / AdAutoMix.

  Subclasses set ``block_name`` (``"automix"`` / ``"adautomix"``), implement
  ``_read_block`` (validates the method block), ``_build_generator`` and
  ``_step``.
  """

  block_name = ""
  reported_variant = "ema_one"
  default_mask_layer = 2
  preview_sources = 2   # N of preview_masks (AdAutoMix: mix_samples)

  @classmethod
  def check_config(cls, config: Any) -> None:
    """Device-free checks run before any data or model work.

    Builds the method once without parameters or compute (a placeholder class
    count and epoch length), so that a bad ``config.<block>`` value fails
    naming its key. ``per_device_batch_stats`` needs the mesh: the loop checks
    it.
    """
    import ml_collections  # pylint: disable=import-outside-toplevel
    dry = ml_collections.ConfigDict(config.to_dict())
    if "per_device_batch_stats" in dry:
      dry.per_device_batch_stats = False
    cls(dry, num_classes=2, steps_per_epoch=1, mesh=None)

  def __init__(self, config: Any, *, num_classes: int, steps_per_epoch: int,
               mesh: jax.sharding.Mesh | None = None, model: Any = None):
    if (isinstance(num_classes, bool) or not isinstance(num_classes, int)
        or num_classes < 2):
      raise ValueError(f"`num_classes` must be an int >= 2; got {num_classes!r}.")
    self.config = config
    self.num_classes = num_classes
    self.steps_per_epoch = check_int(steps_per_epoch, "steps_per_epoch",
                                     minimum=1)
    self.num_epochs = check_int(int(config.num_epochs), "num_epochs", minimum=1)
    self.total_steps = self.steps_per_epoch * self.num_epochs
    self.mesh = mesh
    self.batch_size = check_int(int(config.batch_size), "batch_size", minimum=2)
    if config.get("per_device_mixing", False):
      raise ValueError(
          f"`per_device_mixing=True` is for static mixers; {self.block_name}'s "
          "generator mixes each sample with partners drawn over the global "
          "batch (as the reference's single-GPU CIFAR runs). Use "
          "per_device_batch_stats for DDP-style BatchNorm.")
    if int(config.get("grad_accum_steps", 1)) != 1:
      raise ValueError(
          f"`config.grad_accum_steps` > 1 is implemented for method='static' "
          f"only; {self.block_name}'s step (teacher passes, generator, chained "
          "BatchNorm statistics of several classifier passes) runs on the "
          "whole batch. Use grad_accum_steps=1 (docs/training.md).")
    self.bn_groups = static.bn_groups(config, mesh)
    block = config.get(self.block_name, None)
    if block is None:
      raise ValueError(f"config.method={self.block_name!r} needs a "
                       f"`config.{self.block_name}` block (see configs/"
                       f"{self.block_name}/).")
    self.block = block
    self.mask_layer = check_int(get(block, "mask_layer", self.default_mask_layer),
                                f"{self.block_name}.mask_layer", minimum=0)
    self.teacher_bn = check_choice(get(block, "teacher_bn", "batch_stats"),
                                   TEACHER_BN, f"{self.block_name}.teacher_bn")
    self.label_smoothing = check_unit(float(config.get("label_smoothing", 0.0)),
                                      "label_smoothing", high_open=True)
    # DecoupleMix on the classifier's mixed CE (config.loss.decouple).
    self.decouple = losses.decouple_from_config(config.get("loss", None))
    self._read_block(block)

    if model is None:
      model = static.build_model(config, num_classes, heads=("one", "mix"))
    self.model = model
    self.generator = self._build_generator(cfg_dict(get(block, "generator", {})))

    # Optimizer: one multi_transform over {classifier, generator}. Gradient
    # clipping (ViT configs) is torch's clip_grad_norm_ over *all* trained
    # parameters, so it is applied once to the joint gradient, before the split.
    opt_cfg = cfg_dict(config.optimizer)
    clip = float(opt_cfg.get("grad_clip_norm", 0.0))
    if clip < 0:
      raise ValueError(f"`optimizer.grad_clip_norm` must be >= 0; got {clip}.")
    opt_cfg["grad_clip_norm"] = 0.0
    gen_cfg = cfg_dict(config.get("generator_optimizer", None))
    unknown = sorted(set(gen_cfg) - set(opt_cfg) - {"shared", "b1", "b2", "eps"})
    if unknown:
      raise ValueError(f"`generator_optimizer` has unknown key(s) {unknown}; it "
                       f"takes 'shared' and overrides of config.optimizer's keys "
                       f"{sorted(opt_cfg)}.")
    shared = bool(gen_cfg.pop("shared", True))
    gen_opt_cfg = dict(opt_cfg) if shared else {**opt_cfg, **gen_cfg,
                                                "grad_clip_norm": 0.0}
    kw = dict(steps_per_epoch=self.steps_per_epoch, num_epochs=self.num_epochs)
    self.tx_classifier, self.lr_fn = optim.make_optimizer(opt_cfg, **kw)
    self.tx_generator, self.lr_gen_fn = optim.make_optimizer(gen_opt_cfg, **kw)
    tx = optax.multi_transform(
        {"classifier": self.tx_classifier, "generator": self.tx_generator},
        lambda params: {g: jax.tree.map(lambda _: g, params[g])
                        for g in ("classifier", "generator")})
    self.tx = optax.chain(optax.clip_by_global_norm(clip), tx) if clip else tx

    # EMA teacher: always on for the learned methods.
    ema_cfg = config.get("ema", None)
    if ema_cfg is None:
      ema_cfg = {"schedule": "cosine", "momentum": 0.999,
                 "end_momentum": 0.999999, "warmup_frac": 0.1}
    self.momentum_fn = ema_lib.from_config(ema_cfg, total_steps=self.total_steps)

  # -- subclass hooks ---------------------------------------------------------

  def _read_block(self, block: Any) -> None:
    raise NotImplementedError

  def _build_generator(self, gen_cfg: dict):
    raise NotImplementedError

  def _generator_init_args(self, features: jax.Array, image_hw) -> tuple:
    raise NotImplementedError

  def mixed_ce(self, logits, targets, labels, metrics):
    """The classifier's loss on a mixed sample: soft CE, plus DecoupleMix's
    regulariser with ``config.loss.decouple`` (then its batch mean is also
    added to ``metrics["decouple_reg"]``, summed over the mixed samples)."""
    ce, reg = losses.mixed_cross_entropy(logits, targets, labels,
                                         decouple=self.decouple,
                                         smoothing=self.label_smoothing)
    if self.decouple is not None:
      metrics["decouple_reg"] = metrics.get("decouple_reg", 0.0) + reg
    return ce

  # -- init -------------------------------------------------------------------

  def feature_shapes(self, sample_images: jax.Array) -> tuple:
    """Stage output shapes of the backbone on ``sample_images`` (no compute)."""
    out = jax.eval_shape(
        lambda x: self.model.init_with_output(jax.random.key(0), x,
                                              train=False)[0], sample_images)
    return tuple(tuple(s.shape) for s in out["stages"])

  def check_features(self, sample_images: jax.Array) -> tuple[int, ...]:
    """Validates ``mask_layer`` and the generator's scale; returns the feature shape."""
    shapes = self.feature_shapes(sample_images)
    if self.mask_layer >= len(shapes):
      raise ValueError(
          f"`{self.block_name}.mask_layer`={self.mask_layer} does not exist in "
          f"the backbone {self.config.model.name!r}: it has {len(shapes)} stages "
          f"(0-based indices 0..{len(shapes) - 1}, shapes {shapes}).")
    return shapes[self.mask_layer]

  def init(self, key: jax.Array, sample_images: jax.Array
           ) -> state_lib.TrainState:
    """Initialises classifier, teacher (a copy) and generator.

    ``sample_images``: ``[b, H, W, C]`` float (b >= 1) at the training resolution.
    """
    shape = getattr(sample_images, "shape", None)
    if shape is None or len(shape) != 4:
      raise ValueError(f"`sample_images` must be [b, H, W, C]; got "
                       f"{tuple(shape) if shape is not None else type(sample_images)}.")
    feat_shape = self.check_features(sample_images)
    image_hw = tuple(int(s) for s in shape[1:3])
    k_model, k_gen, k_drop = jax.random.split(key, 3)
    # jit: op-by-op initialisation of a ResNet is much slower than compiling.
    variables = jax.jit(functools.partial(self.model.init, train=False))(
        {"params": k_model, "dropout": k_drop}, sample_images)
    n = max(2, getattr(self, "max_mix", 2))
    features = jnp.zeros((n,) + tuple(feat_shape[1:]), jnp.float32)
    gen_vars = jax.jit(self.generator.init)(
        k_gen, *self._generator_init_args(features, image_hw))
    params = {"classifier": variables["params"],
              "generator": gen_vars["params"]}
    batch_stats = variables.get("batch_stats", {})
    st = state_lib.create(params=params, batch_stats=batch_stats, tx=self.tx,
                          ema=False)
    copy = lambda t: jax.tree.map(jnp.array, t)
    return st.replace(ema_params=copy(params["classifier"]),
                      ema_batch_stats=copy(batch_stats))

  # -- forward passes ---------------------------------------------------------

  def online_apply(self, params, batch_stats, images, key):
    """Train-mode online forward: ``(out, new_batch_stats)``."""
    return static.train_apply(
        self.model, {"params": params, "batch_stats": batch_stats}, images,
        rngs={"dropout": key}, groups=self.bn_groups)

  def teacher_apply(self, params, batch_stats, images, key, *,
                    groups: int | None = None):
    """EMA-teacher forward: ``(out, new_batch_stats)``.

    ``teacher_bn="batch_stats"`` (reference): train mode, BN uses the batch
    statistics and updates the teacher's running stats (and ViT drop-path is
    active, as in the reference's train-mode teacher). ``"running"``: eval mode.
    ``groups``: BatchNorm groups of the train-mode pass (default: the run's,
    ``per_device_batch_stats``).
    """
    if self.teacher_bn == "batch_stats":
      if groups is None:
        return self.online_apply(params, batch_stats, images, key)
      return static.train_apply(
          self.model, {"params": params, "batch_stats": batch_stats}, images,
          rngs={"dropout": key}, groups=groups)
    out = self.model.apply({"params": params, "batch_stats": batch_stats},
                           images, train=False)
    return out, batch_stats

  # -- update -----------------------------------------------------------------

  def update(self, state, ctx) -> tuple[state_lib.TrainState, dict]:
    """One backward pass over L_classifier + L_generator and the update.

    The two losses touch disjoint parameter groups, so the gradient of their
    sum routes each loss to its own group (the reference's single backward).
    Returns ``(new_state, metrics)`` with the loss, the method's own metrics
    from ``self.losses`` and the finiteness flag the loop checks.
    """
    def total(params):
      loss_cls, loss_gen, aux = self.losses(params, state, ctx)
      return loss_cls + loss_gen, aux

    (loss, aux), grads = jax.value_and_grad(total, has_aux=True)(state.params)
    new_state, m = self.apply_update(state, grads, aux["stats"],
                                     aux["teacher_stats"])
    metrics = {"loss": loss, **aux["metrics"], **m,
               "finite": jnp.logical_and(all_finite(grads), jnp.isfinite(loss))}
    return new_state, metrics

  def apply_update(self, state, grads, batch_stats, teacher_stats):
    """Optimizer step on ``{classifier, generator}``, then the EMA teacher.

    Returns ``(new_state, metrics)``.
    """
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # m(t) of the iteration just taken (t = state.step before the increment).
    m, one_minus_m = self.momentum_fn(state.step)
    ema_params = ema_lib.ema_update(state.ema_params, params["classifier"], m,
                                    one_minus_m)
    if self.teacher_bn == "running":
      # Eval-mode teacher: it runs no train-mode pass of its own, so it uses a
      # copy of the online running statistics (StaticMixing's ema.batch_stats
      # = "copy" rule).
      teacher_stats = batch_stats
    new_state = state.replace(step=state.step + 1, params=params,
                              batch_stats=batch_stats, opt_state=opt_state,
                              ema_params=ema_params,
                              ema_batch_stats=teacher_stats)
    metrics = {
        "ema_momentum": m,
        "lr": self.lr_fn(state.step),
        "lr_generator": self.lr_gen_fn(state.step),
        "grad_norm_classifier": optax.tree.norm(grads["classifier"]),
        "grad_norm_generator": optax.tree.norm(grads["generator"]),
        "param_norm": optax.tree.norm(params["classifier"]),
    }
    return new_state, metrics

  # -- mask preview -----------------------------------------------------------

  def preview_masks(self, state, images: jax.Array, *,
                    lam: jax.Array | None = None,
                    key: jax.Array | None = None) -> dict:
    """The generator's masks on a fixed batch with fixed partners (figures).

    Sample b mixes its own image ``x[b]`` (source 0) with ``x[(b + i) % B]``,
    i = 1..N-1 (AutoMix: N = 2; AdAutoMix: ``mix_samples``), at the label
    weights ``lam`` ``[N]`` (default uniform; AutoMix reads ``lam[0]``, the
    own-image weight). The teacher encodes ``images`` as in training (its
    ``teacher_bn`` mode; BatchNorm over this batch as one group). Pure and
    jittable; nothing of the state changes. scripts/visualize_masks.py and the
    trainer's TensorBoard mask images (``config.log_images_every_steps``) call
    it.

    Args:
      state: a ``TrainState`` of this method.
      images: ``[B, H, W, C]`` normalised, B >= N.
      lam: ``[N]`` label weights summing to 1, or None.
      key: dropout key of the teacher pass (default ``key(0)``).

    Returns:
      ``{"sources": [B, N, H, W, C], "masks": [B, N, H, W] (channel i the
      per-pixel weight of source i; they sum to 1), "mixed": [B, H, W, C],
      "lam": [N]}``.
    """
    n = self.preview_sources
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4 or shape[0] < n:
      raise ValueError(f"`images` must be [B, H, W, C] with B >= {n}; got "
                       f"{tuple(shape) if shape is not None else images!r}.")
    lam = (jnp.full((n,), 1.0 / n, jnp.float32) if lam is None
           else jnp.asarray(lam, jnp.float32))
    if lam.shape != (n,):
      raise ValueError(f"`lam` must be [{n}]; got shape {lam.shape}.")
    key = jax.random.key(0) if key is None else key
    out, _ = self.teacher_apply(state.ema_params, state.ema_batch_stats,
                                images, key, groups=1)
    features = out["stages"][self.mask_layer]
    ids = jnp.arange(shape[0], dtype=jnp.int32)
    perms = jnp.stack([jnp.roll(ids, -i) for i in range(n)])         # [N, B]
    masks = self._preview_masks(state.params["generator"], features, perms,
                                lam, tuple(shape[1:3]))             # [B,H,W,N]
    return {"sources": jnp.stack([images[p] for p in perms], axis=1),
            "masks": jnp.moveaxis(masks, -1, 1),
            "mixed": generators.nway_blend(images, masks, perms.T),
            "lam": lam}

  def _preview_masks(self, gen_params, features, perms, lam, image_hw):
    """``[B, H, W, N]`` masks of the sources ``x[perms[i]]`` for ``lam``."""
    raise NotImplementedError

  # -- evaluation -------------------------------------------------------------

  def eval_variants(self, state: state_lib.TrainState) -> dict:
    """Online and EMA-teacher classifiers, heads ``one`` and ``mix``."""
    online = {"params": state.params["classifier"],
              "batch_stats": state.batch_stats}
    teacher = {"params": state.ema_params, "batch_stats": state.ema_batch_stats}
    return {"online_one": (online, "one"), "online_mix": (online, "mix"),
            "ema_one": (teacher, "one"), "ema_mix": (teacher, "mix")}

  def predict(self, variables: Any, head: str, images: jax.Array) -> jax.Array:
    """Eval-mode logits ``[B, K]`` float32 of ``head`` on ``images``."""
    out = self.model.apply(variables, images, train=False)
    return out["logits"][head].astype(jnp.float32)




def random_perms(key: jax.Array, n: int, batch_size: int) -> jax.Array:
  """``[n, B]`` int32: n independent uniform permutations."""
  keys = jax.random.split(key, n)
  return jnp.stack([jax.random.permutation(k, batch_size) for k in keys]
                   ).astype(jnp.int32)


def np_float(x: Any) -> float:
  return float(np.asarray(x))
