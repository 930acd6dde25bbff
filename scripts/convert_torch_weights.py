r"""torchvision / timm ResNet and ViT (DeiT) weights -> this project's Flax tree.

Writes an ``.npz`` that the trainer loads with
``--config.init_from.kind=converted`` (``automix_jax.train.init_from``;
docs/training.md, "Fine-tuning"), and prints the ``config.model`` (name, width,
kwargs) of the matching ``models.build`` model.

  # a torchvision model (weights from torchvision's own cache / download)
  python scripts/convert_torch_weights.py --torchvision resnet18 \
    --pretrained --out weights/resnet18_in1k.npz
  # a timm model
  python scripts/convert_torch_weights.py --timm deit_small_patch16_224 \
    --pretrained --out weights/deit_small_in1k.npz
  # a saved state_dict (torch.save(model.state_dict(), ...))
  python scripts/convert_torch_weights.py --state_dict r50.pth --arch resnet \
    --out weights/r50.npz

Mapping (He et al., CVPR 2016 / torchvision ``models/resnet.py``; Touvron et
al., ICML 2021 / timm ``models/vision_transformer.py``):

* ResNet / ResNeXt: ``conv1``/``bn1`` -> ``stem_conv``/``stem_bn``;
  ``layer{s}.{b}.{conv,bn}{i}`` -> ``layer{s}_{b}/{conv,bn}{i}``;
  ``downsample.0/1`` -> ``downsample_conv``/``downsample_bn``; ``fc`` ->
  ``heads/<head>``. Conv kernels ``[O, I, kh, kw] -> [kh, kw, I, O]``, dense
  ``[out, in] -> [in, out]``; BatchNorm ``weight, bias, running_mean,
  running_var`` -> ``scale, bias`` (params) and ``mean, var`` (batch_stats);
  ``num_batches_tracked`` is dropped. Block type, stage sizes, groups and
  width per group are read from the shapes. Deep-stem variants (timm
  ``resnet50d``, ...) have no counterpart and are refused.
* ViT: ``patch_embed.proj`` -> ``patch_embed``; ``cls_token``, ``pos_embed``
  as they are; ``blocks.{i}.attn.qkv`` ``[3D, D] -> [D, 3, heads, D/heads]``
  (timm splits the output as ``(3, heads, head_dim)``), ``attn.proj``,
  ``mlp.fc1/fc2`` -> ``fc1/fc2``, ``norm1/norm2/norm`` (``weight`` ->
  ``scale``); ``head`` -> ``heads/<head>``. Class-token pooling only (no
  ``fc_norm``, distillation token or register tokens). The position embedding
  fixes the image size: the model must be trained at the converted grid.

Every input key must be used (``num_batches_tracked`` aside), so an
architecture the models do not have fails naming the unknown keys. The
conversion functions take numpy arrays; torch/timm are imported only to load.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Mapping

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from automix_jax.train import init_from  # noqa: E402

ARCHS = ("resnet", "vit")


def _conv(w: np.ndarray) -> np.ndarray:
  return np.transpose(w, (2, 3, 1, 0))


def _dense(w: np.ndarray) -> np.ndarray:
  return np.transpose(w)


class _Reader:
  """The state dict with a record of which keys were used."""

  def __init__(self, state_dict: Mapping[str, Any]):
    self.sd = {k: np.asarray(v) for k, v in state_dict.items()
               if not k.endswith("num_batches_tracked")}
    self.used: set[str] = set()

  def __call__(self, key: str) -> np.ndarray:
    if key not in self.sd:
      raise ValueError(f"state dict has no {key!r}; is it the architecture "
                       "named by --arch?")
    self.used.add(key)
    return self.sd[key]

  def has(self, key: str) -> bool:
    return key in self.sd

  def check_all_used(self, arch: str) -> None:
    left = sorted(set(self.sd) - self.used)
    if left:
      raise ValueError(
          f"{len(left)} state dict entries have no counterpart in this "
          f"project's {arch}: {left[:8]}{' ...' if len(left) > 8 else ''}.")


def _set(tree: dict, path: str, value: np.ndarray) -> None:
  *parents, leaf = path.split("/")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def convert_resnet(state_dict: Mapping[str, Any], *, head: str = "one"
                   ) -> tuple[dict, dict]:
  """torchvision / timm ResNet or ResNeXt -> ``(variables, model spec)``.

  Args:
    state_dict: ``{name: array}`` (torch tensors or numpy).
    head: the head name the ``fc`` layer becomes.

  Returns:
    ``({"params": ..., "batch_stats": ...}, {"name", "num_classes",
    "kwargs"})``, the spec being the ``models.build`` arguments.
  """
  r = _Reader(state_dict)
  params, stats = {}, {}

  def bn(src: str, dst: str) -> None:
    _set(params, f"{dst}/scale", r(f"{src}.weight"))
    _set(params, f"{dst}/bias", r(f"{src}.bias"))
    _set(stats, f"{dst}/mean", r(f"{src}.running_mean"))
    _set(stats, f"{dst}/var", r(f"{src}.running_var"))

  _set(params, "stem_conv/kernel", _conv(r("conv1.weight")))
  bn("bn1", "stem_bn")
  bottleneck = r.has("layer1.0.conv3.weight")
  stage_sizes = []
  for s in range(1, 5):
    blocks = sorted({int(m.group(1)) for k in r.sd
                     if (m := re.match(rf"layer{s}\.(\d+)\.", k))})
    if not blocks or blocks != list(range(len(blocks))):
      raise ValueError(f"state dict has no ResNet stage layer{s} (blocks "
                       f"{blocks}).")
    stage_sizes.append(len(blocks))
    for b in blocks:
      src, dst = f"layer{s}.{b}", f"layer{s}_{b}"
      for i in (1, 2, 3) if bottleneck else (1, 2):
        _set(params, f"{dst}/conv{i}/kernel", _conv(r(f"{src}.conv{i}.weight")))
        bn(f"{src}.bn{i}", f"{dst}/bn{i}")
      if r.has(f"{src}.downsample.0.weight"):
        _set(params, f"{dst}/downsample_conv/kernel",
             _conv(r(f"{src}.downsample.0.weight")))
        bn(f"{src}.downsample.1", f"{dst}/downsample_bn")
  fc_w = r("fc.weight")
  _set(params, f"heads/{head}/kernel", _dense(fc_w))
  _set(params, f"heads/{head}/bias", r("fc.bias"))
  r.check_all_used("ResNet")

  stem = int(r.sd["conv1.weight"].shape[0])
  kwargs: dict[str, Any] = {"stage_sizes": stage_sizes}
  if bottleneck:
    mid = int(r.sd["layer1.0.conv2.weight"].shape[0])
    groups = mid // int(r.sd["layer1.0.conv2.weight"].shape[1])
    name = "resnet50"
    if groups != 1 or mid != 64:
      kwargs.update(groups=groups, base_width=mid // groups)
  else:
    name = "resnet18"
  preset = {"resnet18": [2, 2, 2, 2], "resnet50": [3, 4, 6, 3]}[name]
  if stage_sizes == preset:
    kwargs.pop("stage_sizes")
  spec = {"name": name, "num_classes": int(fc_w.shape[0]),
          "width": stem / 64, "kwargs": kwargs}
  return {"params": params, "batch_stats": stats}, spec


def convert_vit(state_dict: Mapping[str, Any], *, head: str = "one",
                num_heads: int | None = None) -> tuple[dict, dict]:
  """timm VisionTransformer (ViT / DeiT) -> ``(variables, model spec)``.

  Args:
    state_dict: ``{name: array}`` of a class-token ViT.
    head: the head name the ``head`` layer becomes.
    num_heads: attention heads; the weights do not say. Default: D / 64
      (every ViT / DeiT size: tiny 3, small 6, base 12).

  Returns:
    ``({"params": ...}, {"name", "num_classes", "kwargs"})``.
  """
  r = _Reader(state_dict)
  params: dict = {}
  pe = r("patch_embed.proj.weight")                  # [D, C, p, p]
  d, patch = int(pe.shape[0]), int(pe.shape[2])
  heads_n = int(num_heads or max(1, d // 64))
  if d % heads_n:
    raise ValueError(f"`num_heads`={heads_n} does not divide the embedding "
                     f"width {d}.")
  hd = d // heads_n
  _set(params, "patch_embed/kernel", _conv(pe))
  _set(params, "patch_embed/bias", r("patch_embed.proj.bias"))
  _set(params, "cls_token", r("cls_token"))
  _set(params, "pos_embed", r("pos_embed"))
  depth = len({int(m.group(1)) for k in r.sd
               if (m := re.match(r"blocks\.(\d+)\.", k))})

  def dense(src: str, dst: str) -> None:
    _set(params, f"{dst}/kernel", _dense(r(f"{src}.weight")))
    _set(params, f"{dst}/bias", r(f"{src}.bias"))

  def norm(src: str, dst: str) -> None:
    _set(params, f"{dst}/scale", r(f"{src}.weight"))
    _set(params, f"{dst}/bias", r(f"{src}.bias"))

  hidden = None
  for i in range(depth):
    src, dst = f"blocks.{i}", f"block{i}"
    norm(f"{src}.norm1", f"{dst}/norm1")
    qkv_w, qkv_b = r(f"{src}.attn.qkv.weight"), r(f"{src}.attn.qkv.bias")
    _set(params, f"{dst}/attn/qkv/kernel",
         _dense(qkv_w).reshape(d, 3, heads_n, hd))
    _set(params, f"{dst}/attn/qkv/bias", qkv_b.reshape(3, heads_n, hd))
    dense(f"{src}.attn.proj", f"{dst}/attn/proj")
    norm(f"{src}.norm2", f"{dst}/norm2")
    dense(f"{src}.mlp.fc1", f"{dst}/fc1")
    dense(f"{src}.mlp.fc2", f"{dst}/fc2")
    hidden = int(r.sd[f"{src}.mlp.fc1.weight"].shape[0])
  norm("norm", "norm")
  head_w = r("head.weight")
  dense("head", f"heads/{head}")
  r.check_all_used("ViT")
  spec = {"name": "vit_tiny", "num_classes": int(head_w.shape[0]),
          "width": 1.0,
          "kwargs": {"patch_size": patch, "embed_dim": d, "depth": depth,
                     "num_heads": heads_n, "mlp_ratio": hidden / d}}
  return {"params": params}, spec


def convert(state_dict: Mapping[str, Any], *, arch: str, head: str = "one",
            num_heads: int | None = None) -> tuple[dict, dict]:
  """``convert_resnet`` or ``convert_vit`` by ``arch``."""
  if arch == "resnet":
    return convert_resnet(state_dict, head=head)
  if arch == "vit":
    return convert_vit(state_dict, head=head, num_heads=num_heads)
  raise ValueError(f"`arch` must be one of {ARCHS}; got {arch!r}.")


def _numpy_state_dict(model_or_sd) -> dict[str, np.ndarray]:
  sd = model_or_sd.state_dict() if hasattr(model_or_sd, "state_dict") else (
      model_or_sd)
  return {k: v.detach().cpu().numpy() if hasattr(v, "detach") else
          np.asarray(v) for k, v in sd.items()}


def _load(args) -> tuple[dict, str, int | None, str]:
  """``(numpy state dict, arch, num_heads, source description)``."""
  if args.torchvision:
    import torchvision  # pylint: disable=import-outside-toplevel
    model = torchvision.models.get_model(
        args.torchvision, weights="DEFAULT" if args.pretrained else None)
    arch = "vit" if args.torchvision.startswith("vit") else "resnet"
    if arch == "vit":
      raise ValueError("torchvision ViTs use another layout; convert timm "
                       "ViT / DeiT weights (--timm).")
    return (_numpy_state_dict(model), arch, None,
            f"torchvision:{args.torchvision}")
  if args.timm:
    import timm  # pylint: disable=import-outside-toplevel
    model = timm.create_model(args.timm, pretrained=args.pretrained)
    arch = "vit" if hasattr(model, "blocks") else "resnet"
    heads_n = model.blocks[0].attn.num_heads if arch == "vit" else None
    return _numpy_state_dict(model), arch, heads_n, f"timm:{args.timm}"
  import torch  # pylint: disable=import-outside-toplevel
  sd = torch.load(args.state_dict, map_location="cpu", weights_only=True)
  if not args.arch:
    raise ValueError("--state_dict needs --arch (resnet | vit).")
  return (_numpy_state_dict(sd), args.arch, args.num_heads,
          f"state_dict:{os.path.basename(args.state_dict)}")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--torchvision", help="torchvision model name, e.g. resnet18")
  src.add_argument("--timm", help="timm model name, e.g. deit_tiny_patch16_224")
  src.add_argument("--state_dict", help="a torch.save'd state_dict file")
  p.add_argument("--pretrained", action="store_true",
                 help="load the library's pretrained weights")
  p.add_argument("--arch", choices=ARCHS, help="with --state_dict")
  p.add_argument("--num_heads", type=int, default=None,
                 help="ViT attention heads (--state_dict; default D/64)")
  p.add_argument("--head", default="one", help="head name of the classifier")
  p.add_argument("--out", required=True, help="output .npz")
  args = p.parse_args(argv)
  sd, arch, heads_n, source = _load(args)
  variables, spec = convert(sd, arch=arch, head=args.head, num_heads=heads_n)
  init_from.save_converted(args.out, variables,
                           meta={"source": source, "model": spec})
  print(f"wrote {args.out} ({source}, {spec['num_classes']} classes).\n"
        f"  model: name={spec['name']!r} width={spec['width']} "
        f"kwargs={spec['kwargs']} (config.model)\n"
        f"  --config.init_from.path={args.out} "
        "--config.init_from.kind=converted\n"
        "  --config.init_from.skip='^params/heads/'   # when the classes "
        "differ")
  return 0


if __name__ == "__main__":
  sys.exit(main())
