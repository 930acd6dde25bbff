"""timm ViT / Swin weights -> this package's Flax parameter trees (tests only).

Used by the differential tests against timm. The trainer's converter
(``scripts/convert_torch_weights.py`` on the training branch) maps ViTs the
same way; this module only exists so the model tests need nothing outside
``tests/``. Every state-dict entry must be used, so a naming drift fails.

Conventions: linear ``[out, in] -> kernel [in, out]``; conv ``[O, I, kh, kw]
-> [kh, kw, I, O]``; LayerNorm ``weight -> scale``; timm's fused qkv ``[3D,
D]`` splits its output as ``(3, heads, head_dim)``, which is the layout of the
Flax ``DenseGeneral((3, heads, head_dim))`` kernel ``[D, 3, heads, hd]``.
"""

import numpy as np


class _Reader:
  """A state dict as numpy arrays that records which keys were read."""

  def __init__(self, torch_model):
    self.sd = {k: v.detach().cpu().numpy()
               for k, v in torch_model.state_dict().items()}
    self.used = set()

  def __call__(self, key):
    self.used.add(key)
    return self.sd[key]

  def check_all_used(self):
    unused = sorted(set(self.sd) - self.used)
    assert not unused, f"unmapped torch weights: {unused}"


def _dense(r, src, *, bias=True):
  out = {"kernel": r(f"{src}.weight").T}
  if bias:
    out["bias"] = r(f"{src}.bias")
  return out


def _norm(r, src):
  return {"scale": r(f"{src}.weight"), "bias": r(f"{src}.bias")}


def _conv(r, src):
  return {"kernel": np.transpose(r(f"{src}.weight"), (2, 3, 1, 0)),
          "bias": r(f"{src}.bias")}


def _attention(r, src, num_heads):
  w, b = r(f"{src}.qkv.weight"), r(f"{src}.qkv.bias")
  d = w.shape[1]
  hd = w.shape[0] // (3 * num_heads)
  return {"qkv": {"kernel": w.T.reshape(d, 3, num_heads, hd),
                  "bias": b.reshape(3, num_heads, hd)},
          "proj": _dense(r, f"{src}.proj")}


def _mlp_block(r, src, num_heads, attn_extra=None):
  attn = _attention(r, f"{src}.attn", num_heads)
  if attn_extra:
    attn.update(attn_extra)
  return {"norm1": _norm(r, f"{src}.norm1"), "attn": attn,
          "norm2": _norm(r, f"{src}.norm2"),
          "fc1": _dense(r, f"{src}.mlp.fc1"), "fc2": _dense(r, f"{src}.mlp.fc2")}


def vit_params(torch_model, head="one"):
  """timm ``VisionTransformer`` (class token, no fc_norm) -> ``ViT`` params."""
  r = _Reader(torch_model)
  params = {"patch_embed": _conv(r, "patch_embed.proj"),
            "cls_token": r("cls_token"), "pos_embed": r("pos_embed"),
            "norm": _norm(r, "norm"), "heads": {head: _dense(r, "head")}}
  for i, blk in enumerate(torch_model.blocks):
    params[f"block{i}"] = _mlp_block(r, f"blocks.{i}", blk.attn.num_heads)
  r.check_all_used()
  return params


def swin_params(torch_model, head="one"):
  """timm ``SwinTransformer`` -> ``Swin`` params."""
  r = _Reader(torch_model)
  params = {"patch_embed": _conv(r, "patch_embed.proj"),
            "patch_norm": _norm(r, "patch_embed.norm"),
            "norm": _norm(r, "norm"), "heads": {head: _dense(r, "head.fc")}}
  for s, stage in enumerate(torch_model.layers):
    if s:
      params[f"stage{s}_merge"] = {
          "norm": _norm(r, f"layers.{s}.downsample.norm"),
          "reduction": _dense(r, f"layers.{s}.downsample.reduction",
                              bias=False)}
    for j, blk in enumerate(stage.blocks):
      src = f"layers.{s}.blocks.{j}"
      table = r(f"{src}.attn.relative_position_bias_table")
      params[f"stage{s}_block{j}"] = _mlp_block(
          r, src, blk.attn.num_heads,
          attn_extra={"relative_position_bias_table": table})
  r.check_all_used()
  return params


def randomize_(torch_model, seed=0):
  """Non-trivial LayerNorm affine and biases (timm inits them to 1 / 0), so
  every parameter's mapping is exercised. In place."""
  import torch  # pylint: disable=import-outside-toplevel
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in torch_model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.copy_(0.5 + torch.rand(p.shape, generator=gen)
                if name.endswith("weight") else
                0.2 * torch.randn(p.shape, generator=gen))
      elif name in ("cls_token", "pos_embed") or name.endswith(
          "relative_position_bias_table"):
        p.copy_(0.5 * torch.randn(p.shape, generator=gen))
  return torch_model
