"""Shared config pieces: ``parse_arg`` (big_vision style) and the base schema.

``parse_arg("mixer=cutmix,epochs=800,runlocal", mixer="mixup", epochs=400,
runlocal=False)`` returns a ConfigDict with the defaults overridden; each value
is converted to the type of its default (``bool``: a bare name means True, or
``=True/False/1/0``). An unknown name raises ValueError listing the known ones.
"""

from __future__ import annotations

from typing import Any

import ml_collections as mlc


def _convert(name: str, text: str, default: Any) -> Any:
  if isinstance(default, bool):
    low = text.lower()
    if low in ("1", "true", "yes", ""):
      return True
    if low in ("0", "false", "no"):
      return False
    raise ValueError(f"config arg {name!r} expects a bool; got {text!r}.")
  if isinstance(default, int):
    try:
      return int(text)
    except ValueError:
      raise ValueError(f"config arg {name!r} expects an int; got "
                       f"{text!r}.") from None
  if isinstance(default, float):
    try:
      return float(text)
    except ValueError:
      raise ValueError(f"config arg {name!r} expects a float; got "
                       f"{text!r}.") from None
  return text


def parse_arg(arg: str | None, **spec: Any) -> mlc.ConfigDict:
  """Parses ``"k1=v1,k2=v2,flag"`` against the defaults in ``spec``."""
  out = dict(spec)
  if arg:
    for item in arg.split(","):
      item = item.strip()
      if not item:
        continue
      name, eq, value = item.partition("=")
      name = name.strip()
      if name not in spec:
        raise ValueError(f"unknown config arg {name!r}; known args: "
                         f"{', '.join(sorted(spec))}.")
      if not eq and not isinstance(spec[name], bool):
        raise ValueError(f"config arg {name!r} needs a value ({name}=...).")
      out[name] = _convert(name, value.strip(), spec[name])
  return mlc.ConfigDict(out)


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# Static mixers at OpenMixup's CIFAR α (OpenMixup's r18_mixups_CE_none.py).
# "vanilla" is no mixing. attentivemix needs a frozen pretrained scorer
# (OpenMixup: ImageNet R-18 on 224-px upsampled inputs); it is left out of the
# static configs, see docs/training.md.
OPENMIXUP_CIFAR_MIXERS = {
    "vanilla": ("none", {}),
    "mixup": ("mixup", {"alpha": 1.0}),
    "cutmix": ("cutmix", {"alpha": 0.2}),
    "fmix": ("fmix", {"alpha": 0.2}),
    "saliencymix": ("saliencymix", {"alpha": 0.2}),
    "resizemix": ("resizemix", {"alpha": 1.0}),
    "gridmix": ("gridmix", {"alpha": 0.2}),
    "smoothmix": ("smoothmix", {"alpha": 0.2}),
    "maskmix": ("maskmix", {"alpha": 1.0, "grid": 4}),  # 8-px cells at 32 px
    # Model-aware (saliency from the input gradient, computed by the trainer).
    # PuzzleMix's smoothness term reads the de-normalised images, as OpenMixup.
    "puzzlemix": ("puzzlemix", {"alpha": 1.0, "mean": CIFAR10_MEAN,
                                "std": CIFAR10_STD}),
    "comixup": ("comixup", {"alpha": 2.0}),  # the Dirichlet prior's α
}


def mixer_block(mixer: str) -> tuple[mlc.ConfigDict, mlc.ConfigDict]:
  """``(config.mixer, config.switch)`` for an OpenMixup CIFAR mixer name.

  ``"a+b"`` (e.g. ``"mixup+cutmix"``) builds a uniform switch over the named
  mixers (OpenMixup's ``mix_mode=[...]`` lists), each at its CIFAR α.
  """
  parts = [p for p in mixer.split("+") if p]
  for p in parts:
    if p not in OPENMIXUP_CIFAR_MIXERS:
      raise ValueError(
          f"unknown mixer {p!r} for this config; choose from "
          f"{', '.join(sorted(OPENMIXUP_CIFAR_MIXERS))} or join several with "
          "'+' for a random switch.")
  if not parts:
    raise ValueError("`mixer` must name at least one mixer.")
  name, kwargs = OPENMIXUP_CIFAR_MIXERS[parts[0]]
  mix = mlc.ConfigDict({"name": name, "kwargs": dict(kwargs)})
  switch = mlc.ConfigDict({
      "enabled": len(parts) > 1,
      "mixers": tuple(OPENMIXUP_CIFAR_MIXERS[p][0] for p in parts),
      "kwargs": tuple(dict(OPENMIXUP_CIFAR_MIXERS[p][1]) for p in parts),
      "probs": tuple([1.0 / len(parts)] * len(parts)),
      "p_none": 0.0})
  return mix, switch


def base_config() -> mlc.ConfigDict:
  """Every key the trainer reads, with defaults (docs/config_schema.md)."""
  c = mlc.ConfigDict()
  c.method = "static"
  c.seed = 0
  c.num_epochs = 200
  c.batch_size = 100
  c.log_every_steps = 50
  c.eval_every_epochs = 1
  c.report_last_epochs = 10
  c.bf16 = False
  c.stop_after_steps = 0          # > 0: stop (after a checkpoint) at this step
  c.eval_batch_size = 500
  c.final_evals = mlc.ConfigDict({"ece": True, "fgsm": True,
                                  "fgsm_eps": 8.0 / 255, "ece_bins": 10})
  c.progress_bar = True

  c.model = mlc.ConfigDict({"name": "cifar_resnet18", "width": 1.0,
                            "kwargs": mlc.ConfigDict()})
  c.data = mlc.ConfigDict({
      "name": "cifar10_archive",
      "archive_path": "../shared/data/cifar10-jpeg.tar.gz",
      "cache_dir": "", "tfds_data_dir": "", "train_split": "train",
      "test_split": "test", "images_per_class": 0, "subset_seed": 0,
      "augment": "cifar", "image_size": 0,
      "mean": CIFAR10_MEAN, "std": CIFAR10_STD})
  c.optimizer = mlc.ConfigDict({
      "name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False,
      "weight_decay": 1e-4, "schedule": "cosine", "min_lr": 0.0,
      "by_epoch": True, "warmup_epochs": 0.0, "warmup_start_lr": 0.0,
      "grad_clip_norm": 0.0})
  c.label_smoothing = 0.0

  c.mixer, c.switch = mixer_block("mixup")
  # Per-device semantics of multi-GPU PyTorch (docs/training.md): partners
  # and λ drawn inside each device's shard; BatchNorm statistics per device.
  c.per_device_mixing = False
  c.per_device_batch_stats = False

  c.ema = mlc.ConfigDict({"enabled": False, "momentum": 0.999,
                          "end_momentum": 0.999999, "schedule": "constant",
                          "warmup_frac": 0.1, "batch_stats": "forward"})
  c.checkpoint = mlc.ConfigDict({"every_steps": 500, "keep": 3})
  return c


def openmixup_cifar100(c: mlc.ConfigDict, *, min_lr: float) -> mlc.ConfigDict:
  """OpenMixup's CIFAR-100 recipe, shared by the static, AutoMix and AdAutoMix
  configs: TFDS cifar100, crop+flip, batch 100 on one device, SGD lr 0.1
  momentum 0.9 wd 1e-4, per-epoch cosine down to ``min_lr``."""
  c.batch_size = 100
  c.log_every_steps = 100
  c.data.name = "cifar100"          # TFDS
  c.data.archive_path = ""
  c.data.augment = "cifar"
  c.data.mean = CIFAR10_MEAN   # OpenMixup uses these for CIFAR-100 too
  c.data.std = CIFAR10_STD
  c.optimizer.lr = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.by_epoch = True
  c.optimizer.min_lr = min_lr
  return c


def automix_ema(c: mlc.ConfigDict, *, enabled: bool = True) -> mlc.ConfigDict:
  """AutoMix/AdAutoMix's CosineScheduleHook: 0.999 held for 10 % of the
  iterations, then a cosine rise to 0.999999 (CIFAR / Tiny-ImageNet)."""
  c.ema.enabled = enabled
  c.ema.schedule = "cosine"
  c.ema.momentum = 0.999
  c.ema.end_momentum = 0.999999
  c.ema.warmup_frac = 0.1
  return c


def shrink_for_local_run(c: mlc.ConfigDict) -> mlc.ConfigDict:
  """``runlocal``: tiny shapes and a 2-epoch schedule for a smoke run."""
  c.num_epochs = 2
  c.batch_size = 16
  c.model.width = 0.0625
  c.data.images_per_class = 2
  c.log_every_steps = 1
  c.report_last_epochs = 2
  c.checkpoint.every_steps = 10
  return c


def offline_cpu_run(c: mlc.ConfigDict, arg: mlc.ConfigDict) -> mlc.ConfigDict:
  """Turns a learned-mixing CIFAR recipe into its CPU variant on the offline
  CIFAR-10 archive (``arg``: batch_size, width, images_per_class,
  ema_momentum, ema_end_momentum).

  A CPU run has ~60 iterations instead of ~400k: with the reference's
  0.999 -> 0.999999 the teacher (which feeds the generator and is the reported
  variant) would stay at its initialisation. Its time constant 1/(1 - m) is
  scaled to the run instead; the cosine shape is kept.
  """
  c.batch_size = arg.batch_size
  c.eval_batch_size = 500
  c.log_every_steps = 5
  c.report_last_epochs = 2
  c.model.width = arg.width
  c.data.name = "cifar10_archive"
  c.data.archive_path = "../shared/data/cifar10-jpeg.tar.gz"
  c.data.images_per_class = arg.images_per_class
  c.data.mean = CIFAR10_MEAN
  c.data.std = CIFAR10_STD
  c.ema.momentum = arg.ema_momentum
  c.ema.end_momentum = arg.ema_end_momentum
  c.checkpoint.every_steps = 20
  c.checkpoint.keep = 2
  return c
