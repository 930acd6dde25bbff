"""GuidedMixup (Kang & Kim, AAAI 2023, arXiv 2306.16612).

Each image is paired with a partner whose saliency map is far from its own
(a greedy cycle through the batch), and the two are blended *per pixel* by
their relative saliency: ``M = s / (s + s[partner])``, so each pixel comes
mostly from the image that finds it salient; the label weight is the mean of
``M``. The authors' code is github.com/3neutronstar/GuidedMixup
(``FGVC/Implementor/guidedmixup.py``, pairing in ``FGVC/Implementor/
pairing.pyx``; CIFAR/Tiny-ImageNet in ``mixup.py`` + ``main.py``).

Saliency ("Guided-AP"): the input gradient of the clean batch's cross-entropy,
reduced over channels as the authors do, ``sqrt(mean_c g²)``, blurred with a
7x7 Gaussian of σ = 3 (torchvision ``gaussian_blur``, reflect borders) and
normalised to sum 1 per image: ``guided_saliency(input_grad)``, the
``saliency_fn`` the trainer calls (docs/interfaces.md, "Model-aware mixers").

Deviations, on purpose:

* The pairing is used. OpenMixup (``openmixup/models/utils/augments/
  guidedmix.py``) takes ``x[π]`` with a random π and only then computes the
  greedy pairing, so the pairing never reaches the images; the authors'
  CIFAR path (``mixup.py``) asks ``pairing(condition='greedy_c')``, which that
  function answers with a random permutation. Here, as in the authors' FGVC
  code, images, saliency and labels all use the greedy partner.
* Degenerate maps: a map that sums to 0 becomes uniform, and a pixel where
  both maps are 0 gets ``M = 0.5`` (the reference divides by zero there).
* The greedy pairing runs over the whole batch the mixer sees (the FGVC code
  may split it into ``m_part`` chunks to parallelise on CPU).
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from automix_jax.mixers import _common as C
from automix_jax.mixers import _saliencymix as S_

Array = jax.Array

PAIRINGS = ("greedy", "random")


def check_pairing(pairing: Any) -> str:
  return C.check_choice(pairing, PAIRINGS, arg="pairing")


CHECKS = {"pairing": check_pairing,
          "mix_prob": lambda p: C.check_probability(p, arg="mix_prob")}


def gaussian_taps(size: int, sigma: float) -> np.ndarray:
  """torchvision's 1-D Gaussian kernel: ``size`` taps at ``-(size-1)/2 ..
  (size-1)/2``, ``exp(-x²/2σ²)`` normalised to sum 1."""
  x = np.linspace(-(size - 1) / 2, (size - 1) / 2, size)
  taps = np.exp(-0.5 * (x / sigma) ** 2)
  return taps / taps.sum()


def guided_saliency(input_grad: Array, *, blur_size: int = 7,
                    blur_sigma: float = 3.0) -> Array:
  """GuidedMixup's saliency from an input gradient, ``[B, H, W]`` summing to 1.

  ``sqrt(mean_c g²)`` over channels (the authors' Guided-AP reduction), a
  ``blur_size`` x ``blur_size`` Gaussian blur of σ ``blur_sigma``
  (torchvision ``gaussian_blur``: separable, reflect borders), then each map
  divided by its sum (a map summing to 0 becomes uniform). No gradient flows
  through it.

  Args:
    input_grad: ``[B, H, W, C]`` floating, d loss / d images of the clean batch.
    blur_size: odd kernel size (0 or 1: no blur).
    blur_sigma: Gaussian σ in pixels.

  Returns:
    ``[B, H, W]`` float32 maps, each summing to 1.
  """
  shape = getattr(input_grad, "shape", None)
  if (shape is None or len(shape) != 4 or
      not jnp.issubdtype(input_grad.dtype, jnp.floating)):
    raise ValueError(
        "`input_grad` must be a floating [B, H, W, C] input gradient; got "
        f"{tuple(shape) if shape is not None else type(input_grad).__name__}"
        f"{'' if shape is None else ' of dtype ' + str(input_grad.dtype)}.")
  if (isinstance(blur_size, bool) or not isinstance(blur_size, numbers.Integral)
      or blur_size < 0 or (blur_size > 1 and blur_size % 2 == 0)):
    raise ValueError(f"`blur_size` must be an odd int (0 or 1: no blur); got "
                     f"{blur_size!r}.")
  if blur_size > 1 and not (isinstance(blur_sigma, numbers.Real) and
                            blur_sigma > 0):
    raise ValueError(f"`blur_sigma` must be a number > 0; got {blur_sigma!r}.")
  if blur_size > 1 and blur_size // 2 >= min(shape[1], shape[2]):
    raise ValueError(
        f"`blur_size` {blur_size} needs maps larger than {blur_size // 2} "
        f"pixels per side (reflect borders); got {shape[1]}x{shape[2]}.")
  g = jax.lax.stop_gradient(input_grad).astype(jnp.float32)
  sal = jnp.sqrt(jnp.mean(g * g, axis=-1))
  if blur_size > 1:
    sal = S_._separable(sal, gaussian_taps(int(blur_size), float(blur_sigma)))
  return normalize_saliency(sal)


def normalize_saliency(saliency: Array) -> Array:
  """Each ``[H, W]`` map divided by its sum; an all-zero map becomes uniform."""
  sal = jnp.maximum(saliency.astype(jnp.float32), 0.0)
  total = jnp.sum(sal, axis=(1, 2), keepdims=True)
  uniform = jnp.full_like(sal, 1.0 / (sal.shape[1] * sal.shape[2]))
  return jnp.where(total > 0, sal / jnp.where(total > 0, total, 1.0), uniform)


def saliency_distances(saliency: Array) -> Array:
  """Squared L2 distances ``[B, B]`` between flattened ``[B, H, W]`` maps.

  The authors pair by L2 distance; the greedy pairing only compares distances
  (argmax), which squaring keeps, so the square root is skipped.
  """
  flat = saliency.reshape(saliency.shape[0], -1).astype(jnp.float32)
  mesh = C.explicit_mesh(flat)
  if mesh is not None:
    # On an Explicit mesh a [B, B] product of batch-sharded maps has no legal
    # sharding; the pairing needs every distance anyway.
    flat = jax.reshard(flat, jax.sharding.NamedSharding(mesh, jax.P()))
  sq = jnp.sum(flat * flat, axis=1)
  gram = jnp.matmul(flat, flat.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)


def greedy_cycle_pairing(distance: Array) -> Array:
  """The authors' greedy pairing (``onecycle_cover``): partners ``[B]`` int32.

  Start with the most distant pair ``(r, c)`` (``r``'s partner is ``c``),
  then from the last partner go to the most distant image not yet visited,
  until every image has been visited; the last one is paired with ``r``. The
  partners form one cycle through the whole batch (every image is the
  partner of exactly one other, none of itself), a greedy answer to
  ``max_π Σ_i distance[i, π(i)]`` over such cycles. Ties go to the lowest
  index (``argmax``). ``B`` sequential steps of ``O(B)``.

  Args:
    distance: ``[B, B]`` float distances (larger = preferred partners).
  """
  b = distance.shape[0]
  d = jnp.where(jnp.eye(b, dtype=bool), -jnp.inf,
                distance.astype(jnp.float32))
  first = jnp.argmax(d)
  row0, col0 = (first // b).astype(jnp.int32), (first % b).astype(jnp.int32)
  partner = jnp.zeros((b,), jnp.int32).at[row0].set(col0)
  # Columns of visited images are closed: each image is a partner once.
  closed = jnp.zeros((b,), bool).at[row0].set(True)

  def step(_, carry):
    partner, closed, row = carry
    col = jnp.argmax(jnp.where(closed, -jnp.inf, d[row])).astype(jnp.int32)
    return partner.at[row].set(col), closed.at[row].set(True), col

  partner, _, last = jax.lax.fori_loop(0, b - 2, step,
                                       (partner, closed, col0))
  return partner.at[last].set(row0)


def _check_saliency(saliency: Any, batch_size: int, height: int, width: int
                    ) -> None:
  if saliency is None:
    raise ValueError(
        "guidedmixup needs `saliency`: maps [B, H, W] >= 0 on the images' "
        "grid, e.g. `guided_saliency(input_grad)` of the clean batch (the "
        "trainer computes it when `mixers.needs('guidedmixup')` says so).")
  C.check_saliency(saliency, batch_size, height, width)
  C.check_in_range(saliency, 0, np.inf, "`saliency` must be >= 0 and finite; "
                   "got range [{lo}, {hi}].", closed=False)


def guidedmixup(key: Array, images: Array, labels: Array, *,
                saliency: Any = None, pairing: str = "greedy",
                mix_prob: float = 1.0, index: Any = None,
                data_format: Any = None
                ) -> tuple[Array, Array, dict[str, Array]]:
  """GuidedMixup: saliency-guided pairing and a per-pixel saliency ratio mask.

  With ``s`` each map normalised to sum 1 and ``π`` the partners:
  ``M = s / (s + s[π])`` (0.5 where both are 0), ``x̃ = M x + (1 - M) x[π]``,
  ``λ_i = mean(M_i)``, ``ỹ = λ y + (1 - λ) y[π]``.

  Args:
    key: PRNG key (the random pairing and the ``mix_prob`` draw).
    images: ``[B, H, W, C]`` floating images.
    labels: ``[B, K]`` dense targets.
    saliency: ``[B, H, W]`` maps >= 0 of ``images[b]`` (required), e.g.
      ``guided_saliency(input_grad)``; normalised to sum 1 here. Treated as
      a constant (no gradient), as in the reference.
    pairing: ``"greedy"`` (the authors' cycle maximising saliency distance,
      ``greedy_cycle_pairing``) or ``"random"`` (a uniform permutation: the
      authors' ``condition='random'``).
    mix_prob: probability that the batch is mixed at all (the authors'
      ``--mix_prob``: 0.8 for Guided-AP on CIFAR-100); otherwise every mask
      is 1 and λ = 1.
    index: optional explicit partners ``[B]`` (overrides ``pairing``).
    data_format: ``None`` or ``"NHWC"`` (channels last) or ``"NCHW"``
      (channels on axis 1; the output and ``aux['mask']`` keep it).

  Returns:
    ``(mixed_images, mixed_labels, aux)``; ``aux`` holds ``lam`` ``[B]``,
    ``index`` ``[B]`` and ``mask`` ``[B, H, W, 1]`` (own-image weight).
  """
  images = C.channels_last(images, data_format)
  batch_size = C.check_batch(images, labels)
  check_pairing(pairing)
  mix_prob = C.check_probability(mix_prob, arg="mix_prob")
  _, height, width, _ = images.shape
  _check_saliency(saliency, batch_size, height, width)

  k_pair, k_mix = jax.random.split(key)
  sal = normalize_saliency(jax.lax.stop_gradient(saliency))
  if index is not None:
    index = C.check_index(index, batch_size)
  elif pairing == "greedy":
    index = greedy_cycle_pairing(saliency_distances(sal))
  else:
    index = C.draw_partner(k_pair, batch_size, "permutation")
  partner_sal = C.take(sal, index)
  total = sal + partner_sal
  mask = jnp.where(total > 0, sal / jnp.where(total > 0, total, 1.0), 0.5)
  if mix_prob < 1.0:
    mask = jnp.where(jax.random.bernoulli(k_mix, mix_prob), mask, 1.0)
  mask = mask[..., None]
  lam = C.mask_to_lam(mask)
  mixed = C.apply_mask(images, mask, index)
  aux = {"lam": lam, "index": index, "mask": mask}
  return C.restore_layout(mixed, C.mix_labels(labels, lam, index), aux,
                          data_format)
