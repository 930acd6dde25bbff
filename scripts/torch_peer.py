"""A minimal PyTorch peer of the vanilla, MixUp and AdAutoMix training steps.

Written here from the algorithm description in the AdAutoMix paper (arXiv 2312.11954)
and docs/learned_mixing.md — not taken from the authors' code — so that ``scripts/bench_step.py`` can time
the JAX steps and a PyTorch implementation of the same work on the same machine in the
same run. It mirrors the JAX side: CIFAR ResNet-18 (3x3 stride-1 stem, no max-pool),
two linear heads (``one`` and ``mix``), an EMA teacher, the adaptive mask generator with
N images, SGD with momentum and coupled weight decay, float32, eager mode.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    nn.init.zeros_(self.bn2.weight)  # zero_init_residual
    self.short = None
    if stride != 1 or cin != cout:
      self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                 nn.BatchNorm2d(cout))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + (x if self.short is None else self.short(x)))


class CifarResNet18(nn.Module):
  """Returns (stage-3 features, {"one": logits, "mix": logits})."""

  def __init__(self, num_classes, width=1.0):
    super().__init__()
    w = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
    self.stem = nn.Sequential(nn.Conv2d(3, w[0], 3, 1, 1, bias=False),
                              nn.BatchNorm2d(w[0]), nn.ReLU())
    layers, cin = [], w[0]
    for i, (c, s) in enumerate(zip(w, (1, 2, 2, 2))):
      layers.append(nn.Sequential(BasicBlock(cin, c, s), BasicBlock(c, c, 1)))
      cin = c
    self.layers = nn.ModuleList(layers)
    self.head_one = nn.Linear(cin, num_classes)
    self.head_mix = nn.Linear(cin, num_classes)
    for head in (self.head_one, self.head_mix):
      nn.init.normal_(head.weight, 0, 0.01)
      nn.init.zeros_(head.bias)

  def forward(self, x):
    x = self.stem(x)
    feats = []
    for layer in self.layers:
      x = layer(x)
      feats.append(x)
    pooled = x.mean((2, 3))
    return feats[2], {"one": self.head_one(pooled), "mix": self.head_mix(pooled)}


class AdaptiveMask(nn.Module):
  """AdAutoMix's generator: masks [B, N, H, W] that sum to 1 over the N images."""

  def __init__(self, channels, reduction=2, scale=4):
    super().__init__()
    d = channels // reduction
    self.q = nn.Conv2d(channels, d, 1)
    self.k = nn.Conv2d(channels, d, 1)
    self.v = nn.Conv2d(channels, 1, 1)
    for conv in (self.q, self.k, self.v):
      nn.init.normal_(conv.weight, 0, 0.01)
      nn.init.zeros_(conv.bias)
    self.d, self.scale = d, scale

  def forward(self, feats):  # list of N tensors [B, C, h, w]
    b, _, h, w = feats[0].shape
    q = [F.relu(self.q(z)).flatten(2).transpose(1, 2) for z in feats]  # B,hw,d
    k = [F.relu(self.k(z)).flatten(2) for z in feats]                  # B,d,hw
    v = [self.v(z).flatten(2).transpose(1, 2) for z in feats]          # B,hw,1
    logits = []
    for i in range(len(feats)):
      att = sum(q[i] @ k[j] for j in range(len(feats)) if j != i)
      att = torch.softmax(att / math.sqrt(self.d), dim=-1)
      logits.append((att @ v[i]).transpose(1, 2).reshape(b, 1, h, w))
    s = F.interpolate(torch.cat(logits, 1), scale_factor=self.scale,
                      mode="bilinear", align_corners=False)
    return torch.softmax(s, dim=1)


def soft_ce(logits, target):
  return -(target * F.log_softmax(logits, -1)).sum(-1).mean()


def make_sgd(params, lr=0.1):
  return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)


class VanillaStep:

  def __init__(self, num_classes, width=1.0):
    self.net = CifarResNet18(num_classes, width)
    self.opt = make_sgd(self.net.parameters())

  def __call__(self, x, y):
    _, logits = self.net(x)
    loss = F.cross_entropy(logits["one"], y)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return loss


class MixupStep(VanillaStep):

  def __init__(self, num_classes, width=1.0, alpha=1.0):
    super().__init__(num_classes, width)
    self.alpha, self.num_classes = alpha, num_classes

  def __call__(self, x, y):
    lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
    perm = torch.randperm(x.shape[0])
    onehot = F.one_hot(y, self.num_classes).float()
    _, logits = self.net(lam * x + (1 - lam) * x[perm])
    loss = soft_ce(logits["one"], lam * onehot + (1 - lam) * onehot[perm])
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return loss


class AdAutoMixStep:
  """One AdAutoMix iteration (N images), as in the AdAutoMix paper."""

  def __init__(self, num_classes, width=1.0, n=3, alpha=1.0, beta=0.3,
               mixup_ratio=0.5, momentum=0.999):
    self.q = CifarResNet18(num_classes, width)
    self.k = copy.deepcopy(self.q)
    for p in self.k.parameters():
      p.requires_grad_(False)
    channels = self.q.layers[2][1].conv2.out_channels
    self.gen = AdaptiveMask(channels)
    self.opt = make_sgd(list(self.q.parameters()) + list(self.gen.parameters()))
    self.n, self.alpha, self.beta, self.a = n, alpha, beta, mixup_ratio
    self.m, self.num_classes, self.iter = momentum, num_classes, 0

  def __call__(self, x, y):
    b, n = x.shape[0], self.n
    lam = torch.distributions.Beta(self.alpha, self.alpha).sample((n,))
    lam = lam / lam.sum()
    onehot = F.one_hot(y, self.num_classes).float()
    pmb = [torch.randperm(b) for _ in range(n)]
    pbb = [torch.randperm(b) for _ in range(n)]
    with torch.no_grad():
      z, _ = self.k(x)
    m_mb = self.gen([z[p] for p in pmb])
    m_bb = self.gen([z[p] for p in pbb]).detach()
    if lam[0] <= 0.03 or 1 - lam[0] <= 0.03:
      m_bb = lam.view(1, n, 1, 1).expand_as(m_bb)
    x_mb = sum(m_mb[:, i:i + 1] * x[pmb[i]] for i in range(n))
    x_bb = sum(m_bb[:, i:i + 1] * x[pbb[i]] for i in range(n))
    y_mb = sum(lam[i] * onehot[pmb[i]] for i in range(n))
    y_bb = sum(lam[i] * onehot[pbb[i]] for i in range(n))
    # Generator term through the frozen teacher.
    _, p_mb = self.k(x_mb)
    ce_k = soft_ce(p_mb["mix"], y_mb)
    if self.iter % 2 == 0:
      with torch.no_grad():
        p_src = [self.k(x[p])[1]["mix"] for p in pmb]
      cos = sum(lam[i] * F.cosine_similarity(p_mb["mix"], p_src[i], dim=-1)
                for i in range(n)).mean()
      loss_g = -self.beta * ce_k + (1 - self.beta) * cos
    else:
      loss_g = ce_k
    # Classifier term.
    _, p_one = self.q(x)
    x_lin = sum(lam[i] * x[pbb[i]] for i in range(n))
    _, p_lin = self.q(x_lin)
    _, p_bb = self.q(x_bb)
    loss_q = (soft_ce(p_bb["mix"], y_bb) + (1 - self.a) * F.cross_entropy(
        p_one["one"], y) + self.a * soft_ce(p_lin["mix"], y_bb))
    loss = loss_q + loss_g
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    with torch.no_grad():
      for pk, pq in zip(self.k.parameters(), self.q.parameters()):
        pk.mul_(self.m).add_(pq, alpha=1 - self.m)
    self.iter += 1
    return loss


STEPS = {"vanilla": VanillaStep, "mixup": MixupStep, "adautomix": AdAutoMixStep}
