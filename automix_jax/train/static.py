"""Static mixing (MixUp, CutMix, ... or vanilla) as a pure training method.

``StaticMixing(config, num_classes=..., steps_per_epoch=..., mesh=...)`` is the
method the loop plugs in for ``config.method == "static"``:

* ``init(key, sample_images [b, H, W, C]) -> TrainState``
* ``train_step(state, batch, key) -> (state, metrics)`` with
  ``batch = {"image": [B, H, W, C] float32, "label": [B] int32}`` and ``key``
  the run's root key. Pure; the loop jits it once with ``donate_argnums=0``.
* ``eval_variants(state) -> {"online_one": (variables, "one"), "ema_one": ...}``
* ``predict(variables, head, images) -> [B, K] float32 logits``.

Model-aware mixers (docs/interfaces.md, "Model-aware mixers") train like the
static ones: ``train_step`` reads ``mixers.needs(config.mixer.name)`` and
computes what the mixer asks for inside the same jitted step (see
``StaticMixing``).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import optax

from automix_jax import mixers
from automix_jax.train import accumulate
from automix_jax.train import ema as ema_lib
from automix_jax.train import losses
from automix_jax.train import optim
from automix_jax.train import state as state_lib
from automix_jax.train import sumix


def _cfg_dict(x: Any) -> dict:
  if x is None:
    return {}
  return dict(x.to_dict() if hasattr(x, "to_dict") else x)


def build_model(config: Any, num_classes: int, heads=("one",)):
  """``models.build`` from ``config.model`` (+ ``config.bf16``)."""
  from automix_jax import models  # Lazy: models may land after this module.
  dtype = jnp.bfloat16 if config.get("bf16", False) else jnp.float32
  return models.build(config.model.name, num_classes=num_classes,
                      width=float(config.model.get("width", 1.0)),
                      heads=tuple(heads), dtype=dtype,
                      **_cfg_dict(config.model.get("kwargs", None)))


def _get_mixer(name: str, kwargs: Any, where: str):
  """``mixers.get(name, **kwargs)``; a refusal names the config key."""
  kwargs = _cfg_dict(kwargs)
  try:
    return mixers.get(name, **kwargs)
  except (ValueError, TypeError) as e:
    msg = str(e)
    for k in kwargs:
      msg = msg.replace(f"`{k}`", f"`{where}.kwargs.{k}`")
    raise ValueError(f"`{where}` (mixer {name!r}): {msg}") from None


def _switch_enabled(config: Any) -> bool:
  switch = config.get("switch", None)
  return switch is not None and bool(switch.get("enabled", False))


def model_needs(config: Any) -> tuple[str, ...]:
  """What ``config``'s mixer needs from the model (``mixers.needs``); ``()``
  for a switch, whose branches must be static."""
  if _switch_enabled(config):
    return ()
  return mixers.needs(config.mixer.name)


def _check_model_needs(config: Any) -> None:
  """Refuses the combinations the model-aware plumbing does not support."""
  if _switch_enabled(config):
    for i, name in enumerate(config.switch.mixers):
      if mixers.needs(name):
        raise ValueError(
            f"`config.switch.mixers[{i}]` = {name!r} is a model-aware mixer "
            f"(needs {mixers.needs(name)}); `switch` takes static mixers only. "
            f"Use `config.mixer.name={name!r}` with `config.switch.enabled="
            "False` instead.")
    return
  needs = mixers.needs(config.mixer.name)
  refusals = []
  if "feature_mix" in needs:
    refusals += [
        ("per_device_mixing", "mixes hidden features inside the model's "
         "forward pass, not a batch of images that could be split over the "
         "devices"),
        ("per_device_batch_stats", "mixes hidden features of the whole "
         "batch, which the per-device BatchNorm slices (one vmapped forward "
         "per device) cannot see across")]
  if "relabel" in needs:
    refusals.append(
        ("per_device_mixing", "returns its labels as a function of the "
         "model's outputs (relabel), which cannot leave the per-device "
         "shard_map"))
  for key, why in refusals:
    if config.get(key, False):
      raise ValueError(
          f"`config.{key}=True` is not supported with mixer "
          f"{config.mixer.name!r}: it {why}. Set `config.{key}=False`.")


# Hyperparameters by which a "feature_mix" mixer names the stages it mixes
# (docs/interfaces.md): an int `stage` or a tuple `stages`.
STAGE_HYPERPARAMETERS = ("stage", "stages")


def check_feature_stages(config: Any, model: Any) -> None:
  """Refuses a ``feature_mix`` mixer whose ``stage``/``stages`` the model
  lacks (it would never be called there: labels mixed, features not)."""
  name = config.mixer.name
  kwargs = _cfg_dict(config.mixer.get("kwargs", None))
  params = inspect.signature(mixers.get(name)).parameters
  last = int(model.num_feature_stages)
  for hp in STAGE_HYPERPARAMETERS:
    if hp not in params:
      continue
    value = kwargs.get(hp, params[hp].default)
    if value is None or value is inspect.Parameter.empty:
      continue
    values = (value,) if isinstance(value, int) else tuple(value)
    if any(not 0 <= int(v) <= last for v in values):
      raise ValueError(
          f"`config.mixer.kwargs.{hp}` = {value!r}: model "
          f"{config.model.name!r} calls `feature_mix` at stages 0..{last} "
          f"(0 the input), so mixer {name!r} would never mix there. Set "
          f"`config.mixer.kwargs.{hp}` within 0..{last}.")


def _smmix_loss(config: Any) -> dict | None:
  """``config.loss.smmix`` checked (``losses.smmix_from_config``) and refused
  with a mixer that marks no partner tokens after a clean pass."""
  terms = losses.smmix_from_config(config.get("loss", None))
  if terms is not None and "token_attention" not in model_needs(config):
    raise ValueError(
        "`config.loss.smmix.enabled=True` needs a mixer that marks the "
        "partner's tokens (aux['token_mask']) after a clean pass (need "
        "\"token_attention\": smmix, tokenmix); config.mixer.name is "
        f"{config.mixer.name!r}.")
  return terms


# Mixer hyperparameters that are properties of the model (its patch size, so
# that token-grid mixers cut whole tokens): bound from the model's attribute of
# the same name when the config leaves them out (docs/interfaces.md).
MODEL_HYPERPARAMETERS = ("patch_size",)


def model_hyperparameters(config: Any, model: Any) -> dict:
  """``{name: model.<name>}`` for the ``MODEL_HYPERPARAMETERS`` that
  ``config.mixer``'s mixer takes and the config does not set; a set value
  that differs from the model's is refused (the mixer would cut the images
  into other tokens than the model's)."""
  if model is None or _switch_enabled(config):
    return {}
  name = config.mixer.name
  kwargs = _cfg_dict(config.mixer.get("kwargs", None))
  bound = {}
  for hp in MODEL_HYPERPARAMETERS:
    if hp not in mixers.hyperparameter_names(name) or not hasattr(model, hp):
      continue
    value = getattr(model, hp)
    if hp not in kwargs:
      bound[hp] = value
    elif kwargs[hp] != value:
      raise ValueError(
          f"`config.mixer.kwargs.{hp}` = {kwargs[hp]!r} but model "
          f"{config.model.name!r} has {hp} {value!r}: mixer {name!r} would "
          f"cut the images into other tokens than the model's. Leave "
          f"`config.mixer.kwargs.{hp}` out (it is taken from the model).")
  return bound


def build_mixer(config: Any, mesh: jax.sharding.Mesh | None = None,
                model: Any = None):
  """The mixer named by ``config.mixer`` / ``config.switch`` (+ per-device).

  Every mixer name and keyword is validated here (unknown name or bad value ->
  ValueError naming the config key, e.g. ``config.mixer.kwargs.alpha``).
  A model-aware mixer is returned as the registry's function: it takes its
  model inputs (``saliency=``, ``cam=``, ``token_attention=``) per call, which
  ``per_device`` splits over the devices with the batch. With ``model``, the
  mixer's ``MODEL_HYPERPARAMETERS`` (``patch_size``) come from it.
  """
  mixer = _config_mixer(config)
  _check_model_needs(config)
  bound = model_hyperparameters(config, model)
  if bound:
    mixer = functools.partial(mixer, **bound)
  if config.get("per_device_mixing", False):
    if mesh is None:
      raise ValueError("`per_device_mixing=True` needs the device mesh.")
    mixer = mixers.per_device(mixer, mesh)
  return mixer


def _config_mixer(config: Any):
  """The mixer of ``config.mixer`` / ``config.switch``, without per-device."""
  switch = config.get("switch", None)
  if _switch_enabled(config):
    names = list(switch.mixers)
    kwargs = list(switch.get("kwargs", ())) or [{}] * len(names)
    if len(kwargs) != len(names):
      raise ValueError(
          f"`switch.kwargs` needs one dict per mixer in `switch.mixers` "
          f"({len(names)}); got {len(kwargs)}.")
    fns = [_get_mixer(n, k, f"config.switch[{i}]")
           for i, (n, k) in enumerate(zip(names, kwargs))]
    probs = list(switch.get("probs", ())) or None
    p_none = float(switch.get("p_none", 0.0))

    def mixer(key, images, labels):
      return mixers.switch(key, images, labels, mixers=fns, probs=probs,
                           p_none=p_none)
  else:
    mixer = _get_mixer(config.mixer.name, config.mixer.get("kwargs", None),
                       "config.mixer")
  return mixer


def bn_groups(config: Any, mesh: jax.sharding.Mesh | None) -> int:
  """How many slices of the batch BatchNorm normalises separately.

  ``config.per_device_batch_stats`` False (default): 1, statistics over the
  global batch (SyncBN: what jit over a sharded batch gives). True: one slice
  per device of the ``"data"`` axis, as DDP without SyncBN (the reference's
  ImageNet runs).
  """
  if not config.get("per_device_batch_stats", False):
    return 1
  if mesh is None:
    raise ValueError("`per_device_batch_stats=True` needs the device mesh.")
  groups = int(mesh.shape["data"])
  if int(config.batch_size) % groups:
    raise ValueError(
        f"`per_device_batch_stats=True`: batch_size {config.batch_size} must "
        f"split evenly over the {groups} devices.")
  return groups


def train_apply(model: Any, variables: dict, images: jax.Array, *,
                rngs: dict, groups: int = 1, **model_kwargs: Any
                ) -> tuple[Any, Any]:
  """Train-mode forward: ``(out, new_batch_stats)``.

  ``model_kwargs`` go to ``model.apply`` (``feature_mix=fn`` of a model-aware
  mixer, ``return_attention=True`` of a ViT). With ``groups > 1`` each must be
  None, a Python bool (passed to every slice as it is) or an array with the
  batch's leading dimension, split with it; a callable such as
  ``feature_mix`` cannot be split and raises ``ValueError``.

  ``groups > 1``: the batch ``[B, ...]`` is split into ``groups`` contiguous
  slices ``[groups, B / groups, ...]`` (one per device of the batch sharding,
  so no data moves), the model runs on each slice with the same weights
  (``jax.vmap``), BatchNorm normalises each slice with its own statistics, and
  the running statistics are averaged over slices (flax's ImageNet example's
  cross-replica mean, equal to averaging every device's running statistics).
  Each slice gets its own dropout key. ``groups == 1`` is a plain apply.
  """
  # Static switches (bools) go to every slice unsplit.
  flags = {k: v for k, v in model_kwargs.items() if isinstance(v, bool)}
  model_kwargs = {k: v for k, v in model_kwargs.items() if k not in flags}

  def one(x, keys, kwargs):
    out, upd = model.apply(variables, x, train=True, mutable=["batch_stats"],
                           rngs=keys, **kwargs, **flags)
    return out, upd.get("batch_stats", variables.get("batch_stats", {}))

  if groups == 1:
    return one(images, rngs, model_kwargs)
  b = images.shape[0]
  if b % groups:
    raise ValueError(f"`images` batch {b} does not split into {groups} "
                     "BatchNorm groups.")
  for name, value in model_kwargs.items():
    if value is not None and getattr(value, "shape", (None,))[:1] != (b,):
      raise ValueError(
          f"`{name}` cannot be split into {groups} BatchNorm groups: with "
          f"`groups > 1` model keywords must be [B, ...] arrays (B = {b}); "
          f"got {type(value).__name__}.")
  split = lambda a: a.reshape(groups, b // groups, *a.shape[1:])
  x = split(images)
  kwargs = jax.tree.map(split, model_kwargs)
  keys = {name: jax.random.split(k, groups) for name, k in rngs.items()}
  out, stats = jax.vmap(one)(x, keys, kwargs)
  out = jax.tree.map(lambda a: a.reshape(b, *a.shape[2:]), out)
  return out, jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)


def all_finite(*trees: Any) -> jax.Array:
  """True iff every leaf of every tree is finite (the loop's ``finite`` flag)."""
  leaves = [jnp.all(jnp.isfinite(x)) for t in trees for x in jax.tree.leaves(t)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


# How the static EMA model gets its BatchNorm statistics (StaticMixing).
EMA_BATCH_STATS_RULES = ("forward", "copy")


class StaticMixing:
  """Classifier trained on statically mixed batches (soft-target CE).

  EMA (optional, ``config.ema.enabled``): after each optimizer step,
  ``ema_params <- m ema_params + (1 - m) params`` with m from
  ``config.ema`` (constant or AutoMix's cosine schedule).

  The EMA model's BatchNorm statistics (``config.ema.batch_stats``):

  * ``"forward"`` (default): the EMA model runs its own train-mode forward
    pass on the clean batch after each update (no gradient) and keeps its own
    running statistics -- exactly how the AutoMix / AdAutoMix momentum teacher
    gets its statistics, so static and learned methods are ranked on the same
    kind of EMA model. Costs one extra forward pass per step.
  * ``"copy"``: the online model's running statistics are copied. Cheaper, but
    the statistics then describe the online weights, not the lagging EMA
    weights; in short runs this cost the EMA model 10-20 points of top-1
    (results/reproduce_cpu_underfit.md, the earlier reduced run).

  Model-aware mixers (``mixers.needs(config.mixer.name)``, computed in the
  same jitted step, never differentiated into the mixing):

  * ``"saliency"``: ``saliency_fn(d CE(logits_one(images), one_hot(labels))
    / d images)`` on the clean batch, the CE a batch mean, from one extra
    forward + backward in **eval mode** (running BatchNorm statistics, no
    dropout, nothing updated). This follows PuzzleMix's code (Kim et al., ICML
    2020, github.com/snu-mllab/PuzzleMix ``main.py``: ``model.eval()`` before
    the saliency pass with the default ``clean_lam=0``) and OpenMixup's
    ``augments/puzzlemix.py``; unsmoothed one-hot targets.
  * ``"cam"``: ``models.class_activation_map`` of head ``"one"`` from a
    clean **train-mode** forward whose BatchNorm statistics are *kept* (the
    mixed forward then starts from them): SnapMix's code (Huang et al., AAAI
    2021, github.com/Shaoli-Huang/SnapMix ``utils/mixmethod.py:get_spm``)
    runs that forward under ``torch.no_grad()`` with the model in train mode,
    which updates the running statistics.
  * ``"feature_mix"``: the mixer returns ``(feature_mix, mixed_targets,
    aux)`` and the model runs on the *clean* images with
    ``feature_mix=feature_mix`` (the one differentiated forward). Not
    supported with ``per_device_mixing`` or ``per_device_batch_stats``
    (refused by ``check_config``).
  * ``"token_attention"``: the model output ``"token_attention"`` ``[B, h,
    w]`` of a clean forward pass in **eval mode** (no dropout or stochastic
    depth, nothing updated): SMMix's code (Chen et al., ICCV 2023,
    github.com/ChenMnZ/SMMix ``smmix.py``: ``motivat_model.eval()`` under
    ``no_grad``). With ``config.loss.smmix.enabled`` the loss adds SMMix's
    fine-grained label assignment (the mixed pass's last-stage tokens of
    each image's region, mean-pooled, through head "one", against that
    image's targets; weight ``fine_weight`` on the sum of the two CEs) and
    its consistency term (KL to the λ-mix of that clean pass's logits;
    ``consistency_weight``): the authors' ``cls + ½ (fine_a + fine_b) +
    con``.
  * ``"relabel"``: the mixer returns ``(mixed, relabel, aux)``; the one
    differentiated forward runs on ``mixed`` (with ``return_attention=True``
    when ``mixers.relabel_outputs`` holds ``"attention"``) and the targets
    are ``relabel(stop_gradient(out))`` of that same pass (TransMix, MixPro,
    TL-Align). Not supported with ``per_device_mixing``.

  ``init`` refuses a model that lacks an output the mixer reads
  (``"token_attention"``, ``mixers.relabel_outputs``), naming the mixer:
  e.g. TransMix on a ResNet.

  A model-aware mixer inside ``config.switch`` is refused.

  ``config.label_mix`` (``automix_jax/train/sumix.py``): ``"sumix"`` adds the
  model head ``"uncertain"`` and a differentiated clean-batch forward; the
  loss is SUMix's (per-sample corrected targets + uncertainty term) from the
  clean and mixed outputs and the mixer's ``lam`` / ``index`` (two-image
  mixers, any of them, also a switch or a model-aware mixer).

  ``config.grad_accum_steps`` = k > 1: the batch is mixed whole, then its
  gradient is accumulated over k micro-batches (``train.accumulate``); the
  "forward" EMA statistics use the same micro-batches. Not with a
  ``feature_mix`` or ``relabel`` mixer, ``config.loss.smmix`` or
  ``config.label_mix`` (refused: they act on the whole batch at once).
  ``config.label_mix`` is refused with a ``relabel`` mixer and with
  ``config.loss.smmix``, whose targets or loss terms replace the λ targets
  SUMix corrects.
  """

  reported_variant: str

  @staticmethod
  def check_config(config: Any) -> None:
    """Device-free checks run before any data or model work: every mixer name
    and keyword (ValueError naming the config key), and the model-aware
    combinations this method refuses (a model-aware mixer in a switch or with
    per-device mixing / BatchNorm when it mixes features)."""
    _config_mixer(config)
    _check_model_needs(config)
    smmix_loss = _smmix_loss(config)
    label_mix = sumix.from_config(config)
    needs = model_needs(config)
    accumulates = accumulate.steps_of(config) > 1
    # Targets or loss terms computed from the whole batch's forward pass.
    whole_batch_targets = "relabel" in needs or smmix_loss is not None
    if accumulates and (label_mix is not None or "feature_mix" in needs):
      raise ValueError(
          "`config.grad_accum_steps` > 1 does not combine with a feature-mixing "
          "mixer (`config.mixer`) or `config.label_mix`: both act on the whole "
          "batch in one forward; use grad_accum_steps=1.")
    if label_mix is not None and losses.decouple_from_config(
        config.get("loss", None)) is not None:
      raise ValueError(
          "`config.label_mix` (SUMix) replaces the classification loss, so it "
          "does not combine with `config.loss.decouple` (DecoupleMix); enable "
          "one of them.")
    if accumulates and whole_batch_targets:
      raise ValueError(
          "`config.grad_accum_steps` > 1 does not combine with a relabelling "
          "mixer (`config.mixer`: its targets come from the whole batch's "
          "forward pass) or `config.loss.smmix`; use grad_accum_steps=1.")
    if label_mix is not None and whole_batch_targets:
      raise ValueError(
          "`config.label_mix` (SUMix) corrects the mixer's λ targets, so it "
          "does not combine with a relabelling mixer (`config.mixer`) or "
          "`config.loss.smmix`, whose targets or loss terms replace them.")

  def __init__(self, config: Any, *, num_classes: int, steps_per_epoch: int,
               mesh: jax.sharding.Mesh | None = None):
    if not isinstance(num_classes, int) or num_classes < 2:
      raise ValueError(f"`num_classes` must be an int >= 2; got "
                       f"{num_classes!r}.")
    self.config = config
    self.num_classes = num_classes
    self.steps_per_epoch = int(steps_per_epoch)
    self.total_steps = self.steps_per_epoch * int(config.num_epochs)
    self.mesh = mesh
    # A label/loss wrapper (config.label_mix, SUMix) may add a model head.
    self.label_mix = sumix.from_config(config)
    self.model = build_model(config, num_classes, heads=("one",) + (
        self.label_mix.heads if self.label_mix is not None else ()))
    self.mixer = build_mixer(config, mesh, self.model)
    self.needs = model_needs(config)
    if "feature_mix" in self.needs:
      check_feature_stages(config, self.model)
    self.saliency_fn = (mixers.saliency_fn(config.mixer.name)
                        if "saliency" in self.needs else None)
    self.relabel_outputs = (mixers.relabel_outputs(config.mixer.name)
                            if "relabel" in self.needs else ())
    # The outputs the model must provide: of the clean pass, of the mixed one.
    self.model_outputs = (
        ("token_attention",) if "token_attention" in self.needs else ()
    ) + self.relabel_outputs
    self.bn_groups = bn_groups(config, mesh)
    self.grad_accum_steps = accumulate.steps_of(config)
    self.tx, self.lr_fn = optim.make_optimizer(
        config.optimizer, steps_per_epoch=self.steps_per_epoch,
        num_epochs=int(config.num_epochs))
    self.label_smoothing = float(config.get("label_smoothing", 0.0))
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"`label_smoothing` must lie in [0, 1); got "
                       f"{self.label_smoothing}.")
    # DecoupleMix (config.loss.decouple; None = plain soft CE).
    self.decouple = losses.decouple_from_config(config.get("loss", None))
    # SMMix's fine-grained and consistency terms (config.loss.smmix).
    self.smmix_loss = _smmix_loss(config)
    self.use_ema = bool(config.ema.enabled)
    self.momentum_fn = (ema_lib.from_config(config.ema,
                                            total_steps=self.total_steps)
                        if self.use_ema else None)
    self.reported_variant = "ema_one" if self.use_ema else "online_one"
    self.ema_stats_rule = str(config.ema.get("batch_stats", "forward"))
    if self.ema_stats_rule not in EMA_BATCH_STATS_RULES:
      raise ValueError(f"`ema.batch_stats` must be one of "
                       f"{EMA_BATCH_STATS_RULES}; got {self.ema_stats_rule!r}.")

  # --------------------------------------------------------------------------

  def init(self, key: jax.Array, sample_images: jax.Array
           ) -> state_lib.TrainState:
    """Initialises the model on ``sample_images`` ``[b, H, W, C]`` (b >= 1)."""
    k_params, k_drop = jax.random.split(key)
    variables = self.model.init({"params": k_params, "dropout": k_drop},
                                sample_images, train=False)
    self.check_model_outputs(variables, sample_images)
    return state_lib.create(params=variables["params"],
                            batch_stats=variables.get("batch_stats", {}),
                            tx=self.tx, ema=self.use_ema)

  def check_model_outputs(self, variables: Any, sample_images: Any) -> None:
    """Refuses a model without an output the mixer reads (abstract forward
    pass, no compute): ``ValueError`` naming the mixer and the output."""
    if not self.model_outputs:
      return
    from automix_jax import models  # Lazy, as build_model.
    name = self.config.mixer.name
    kwargs = ({"return_attention": True}
              if "attention" in self.model_outputs and
              "return_attention" in inspect.signature(
                  type(self.model).__call__).parameters else {})
    try:
      out = jax.eval_shape(
          functools.partial(self.model.apply, train=False, **kwargs),
          variables, sample_images)
    except ValueError as e:  # Swin refuses return_attention=True.
      if not kwargs:
        raise
      raise ValueError(f"mixer {name!r} (config.mixer.name) needs the model "
                       "output 'attention' (a call with return_attention="
                       f"True): {e}") from None
    for key in self.model_outputs:
      models.require_output(out, key, needed_by=f"mixer {name!r} "
                            "(config.mixer.name)")

  def train_step(self, state: state_lib.TrainState, batch: dict,
                 key: jax.Array) -> tuple[state_lib.TrainState, dict]:
    """One update on a mixed batch. ``batch``: image ``[B,H,W,C]``, label ``[B]``."""
    images, labels = batch["image"], batch["label"]
    step_key = jax.random.fold_in(key, state.step)
    k_mix, k_drop = jax.random.split(step_key)  # by purpose: mixing, dropout
    targets = mixers.one_hot(labels, self.num_classes,
                             smoothing=self.label_smoothing)
    inputs, start_stats, clean = self._model_inputs(state, images, labels,
                                                    step_key)
    mixed, mixed_targets, aux = self.mixer(k_mix, images, targets, **inputs)
    model_kwargs = {}
    if "feature_mix" in self.needs:
      # `mixed` is the feature_mix function; the model mixes the clean batch.
      mixed, model_kwargs = images, {"feature_mix": mixed}
    relabel = None
    if "relabel" in self.needs:
      # The targets are a function of this step's forward pass.
      relabel, mixed_targets = mixed_targets, None
      if "attention" in self.relabel_outputs:
        model_kwargs["return_attention"] = True

    own_targets = targets  # unmixed (SMMix's fine-grained terms)

    def loss_fn(params, batch_stats, inputs, key):
      x, y, int_labels = inputs
      stats = batch_stats
      if self.label_mix is not None:
        # SUMix: a differentiated train-mode forward of the clean batch
        # first, whose running statistics the mixed forward continues from
        # (the reference's order).
        clean_out, stats = train_apply(
            self.model, {"params": params, "batch_stats": stats}, images,
            rngs={"dropout": jax.random.fold_in(key, 1)},
            groups=self.bn_groups)
      out, stats = train_apply(
          self.model, {"params": params, "batch_stats": stats}, x,
          rngs={"dropout": key}, groups=self.bn_groups, **model_kwargs)
      if self.label_mix is not None:
        loss, extra = self.label_mix.loss(clean_out, out, labels, targets, aux)
        return loss, (stats, extra)
      extra, step_aux = {}, aux
      if relabel is not None:
        # Labels are data: no gradient flows through the attention into them.
        y, step_aux = relabel(jax.lax.stop_gradient(out))
        extra["lam_mean"] = jnp.mean(step_aux["lam"])
      loss, reg = losses.mixed_cross_entropy(
          out["logits"]["one"], y, int_labels, decouple=self.decouple,
          smoothing=self.label_smoothing)
      if self.decouple is not None:
        extra["decouple_reg"] = reg
      if self.smmix_loss is not None:
        loss, terms = self._smmix_terms(loss, out, params, own_targets,
                                        step_aux, clean)
        extra.update(terms)
      return loss, (stats, extra)

    # grad_accum_steps > 1: the mixed batch in micro-batches (accumulate.py;
    # check_config refuses it with SUMix, feature mixing, relabelling and the
    # SMMix loss, which act on the whole batch at once).
    (loss, (batch_stats, extra)), grads = accumulate.value_and_grad(
        loss_fn, state.params, start_stats, (mixed, mixed_targets, labels),
        k_drop, steps=self.grad_accum_steps)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
        "lr": self.lr_fn(state.step),
        "lam_mean": jnp.mean(aux["lam"]),
        "finite": jnp.logical_and(all_finite(grads), jnp.isfinite(loss)),
        **extra,
    }
    ema_params, ema_batch_stats = state.ema_params, state.ema_batch_stats
    if self.use_ema:
      # m(t) of the iteration just taken (t = state.step before increment).
      m, one_minus_m = self.momentum_fn(state.step)
      ema_params = ema_lib.ema_update(ema_params, params, m, one_minus_m)
      if self.ema_stats_rule == "copy":
        ema_batch_stats = batch_stats
      else:  # "forward": the EMA model's own running statistics.
        ema_batch_stats = accumulate.running_stats(
            lambda stats, x, k: train_apply(
                self.model, {"params": ema_params, "batch_stats": stats}, x,
                rngs={"dropout": k}, groups=self.bn_groups)[1],
            state.ema_batch_stats, images, jax.random.fold_in(step_key, 2),
            steps=self.grad_accum_steps)
      metrics["ema_momentum"] = m
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats,
        opt_state=opt_state, ema_params=ema_params,
        ema_batch_stats=ema_batch_stats)
    return new_state, metrics

  def _smmix_terms(self, loss: jax.Array, out: dict, params: Any,
                   own_targets: jax.Array, aux: dict, clean: dict
                   ) -> tuple[jax.Array, dict]:
    """``loss`` plus SMMix's fine-grained and consistency terms (Chen et al.,
    ICCV 2023; ``losses.region_cross_entropy`` / ``consistency_kl``) on the
    mixed pass's last-stage tokens, head "one" and the clean pass's logits;
    and the terms as metrics."""
    head = params["heads"]["one"]
    index = aux["index"]
    fine_own, fine_partner = losses.region_cross_entropy(
        out["stages"][-1], aux["token_mask"], (head["kernel"], head["bias"]),
        own_targets, own_targets[index])
    kl = losses.consistency_kl(out["logits"]["one"], clean["logits"]["one"],
                               aux["lam"], index)
    w = self.smmix_loss
    loss = (loss + w["fine_weight"] * (fine_own + fine_partner) +
            w["consistency_weight"] * kl)
    return loss, {"smmix_fine": 0.5 * (fine_own + fine_partner),
                  "smmix_consistency": kl}

  def _model_inputs(self, state: state_lib.TrainState, images: jax.Array,
                    labels: jax.Array, step_key: jax.Array
                    ) -> tuple[dict, Any, Any]:
    """The mixer's model inputs, the BatchNorm statistics the
    differentiated forward starts from (see the class docstring) and the
    clean eval-mode pass's outputs (None without "token_attention")."""
    inputs, stats, clean = {}, state.batch_stats, None
    # Model inputs are data for the mixer: no gradient reaches the weights
    # through them (stop_gradient also documents it; they are computed
    # outside the differentiated loss anyway).
    params = jax.lax.stop_gradient(state.params)
    if "saliency" in self.needs:
      hot = mixers.one_hot(labels, self.num_classes)
      variables = {"params": params, "batch_stats": state.batch_stats}

      def clean_loss(x):
        out = self.model.apply(variables, x, train=False)
        return losses.soft_cross_entropy(out["logits"]["one"], hot)

      grad = jax.grad(clean_loss)(images)
      inputs["saliency"] = jax.lax.stop_gradient(self.saliency_fn(grad))
    if "cam" in self.needs:
      from automix_jax import models  # Lazy, as build_model.
      out, stats = train_apply(
          self.model, {"params": params, "batch_stats": stats}, images,
          rngs={"dropout": jax.random.fold_in(step_key, 3)},
          groups=self.bn_groups)
      inputs["cam"] = jax.lax.stop_gradient(
          models.class_activation_map(out, params, "one", labels))
    if "token_attention" in self.needs:
      from automix_jax import models  # Lazy, as build_model.
      clean = jax.lax.stop_gradient(self.model.apply(
          {"params": params, "batch_stats": state.batch_stats}, images,
          train=False))
      inputs["token_attention"] = models.require_output(
          clean, "token_attention",
          needed_by=f"mixer {self.config.mixer.name!r}")
    return inputs, stats, clean

  # --------------------------------------------------------------------------

  def eval_variants(self, state: state_lib.TrainState) -> dict:
    """``{name: (variables, head)}``: online (and EMA) weights, head "one"."""
    out = {"online_one": ({"params": state.params,
                           "batch_stats": state.batch_stats}, "one")}
    if self.use_ema:
      out["ema_one"] = ({"params": state.ema_params,
                         "batch_stats": state.ema_batch_stats}, "one")
    return out

  def predict(self, variables: Any, head: str, images: jax.Array) -> jax.Array:
    """Eval-mode logits ``[B, K]`` float32 of ``head`` on ``images`` ``[B,H,W,C]``."""
    out = self.model.apply(variables, images, train=False)
    return out["logits"][head].astype(jnp.float32)
