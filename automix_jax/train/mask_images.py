"""Figures of learned mixing masks, and the trainer's TensorBoard mask images.

AutoMix (Liu et al., "AutoMix: Unveiling the Power of Mixup for Stronger
Classifiers", ECCV 2022, arXiv 2103.13027) and AdAutoMix (Qin et al.,
"Adversarial AutoMixup", ICLR 2024, arXiv 2312.11954) learn a mask generator;
its masks are how one tells a working generator from a collapsed one (a plain
blend, a whole-image pick). ``mask_figure`` draws the output of
``method.preview_masks`` (sources, masks with a colour bar, mixed images);
scripts/visualize_masks.py saves it as a PNG and ``MaskImages`` logs it to
TensorBoard every ``config.log_images_every_steps`` steps of a training run.

``MaskImages`` runs a separate jitted function (the EMA teacher and the
generator on a fixed batch of test images of distinct classes) only at the
steps it logs: the train step is unchanged, so steps in between cost nothing.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from automix_jax import metrics as metrics_lib
from automix_jax import sharding

__all__ = ["MaskImages", "mask_figure", "IMAGE_TAG", "NUM_IMAGES"]

IMAGE_TAG = "masks"
NUM_IMAGES = 8      # rows of the TensorBoard figure (at least N sources)
_SCAN = 50          # test examples read per row to find distinct classes


_PAD = 2            # pixels between tiles


def _to_rgb(x, mean, std) -> np.ndarray:
  x = np.asarray(x, np.float32) * np.asarray(std) + np.asarray(mean)
  return np.clip(x, 0.0, 1.0)


def _tile(blocks: np.ndarray, fill: float) -> np.ndarray:
  """``[R, C, H, W, ...]`` -> one ``[R (H + pad), C (W + pad), ...]`` image."""
  r, c, h, w = blocks.shape[:4]
  pad = [(0, 0), (0, 0), (0, _PAD), (0, _PAD)] + [(0, 0)] * (blocks.ndim - 4)
  out = np.pad(blocks, pad, constant_values=fill)
  out = np.moveaxis(out, 2, 1)                 # [R, H', C, W', ...]
  return out.reshape(r * (h + _PAD), c * (w + _PAD), *blocks.shape[4:])


def mask_figure(result: dict, *, mean: Sequence[float], std: Sequence[float],
                labels: Sequence[int] | None = None,
                class_names: Sequence[str] | None = None, title: str = "",
                tile_inches: float = 1.0, dpi: int = 100):
  """A grid figure of ``preview_masks``'s output.

  One row per mixed sample: its N sources (``x0`` is the sample's own image),
  the N masks (mask i is the per-pixel weight of source i, grey scale with a
  colour bar: white = all of that source, black = none of it; so white in
  mask 0 is the sample's own image) and the mixed image. Rows are labelled
  with the class of the own image when ``labels`` is given. Three image panels
  (sources, masks, mixed) rather than one axis per tile: it renders in a
  fraction of the time, which matters for the trainer's periodic images.

  Args:
    result: ``{"sources": [B, N, H, W, C], "masks": [B, N, H, W],
      "mixed": [B, H, W, C], "lam": [N]}`` (normalised images).
    mean, std: the normalisation to undo for display.
    labels: int ``[B]`` classes of the own images, optional.
    class_names: names indexed by label, optional.
    title: figure title.
    tile_inches, dpi: size of one tile.

  Returns:
    A ``matplotlib.figure.Figure`` (not registered with pyplot), its axes
    ``[sources, masks, mixed, colour bar]``.
  """
  from matplotlib import colormaps  # pylint: disable=import-outside-toplevel
  from matplotlib import figure as mpl_figure  # pylint: disable=import-outside-toplevel
  sources, masks, mixed = (np.asarray(result[k]) for k in
                           ("sources", "masks", "mixed"))
  lam = np.asarray(result["lam"])
  if sources.ndim != 5 or masks.shape != sources.shape[:4] \
      or mixed.shape != sources.shape[:1] + sources.shape[2:] \
      or lam.shape != sources.shape[1:2]:
    raise ValueError(
        "`result` must hold sources [B, N, H, W, C], masks [B, N, H, W], "
        f"mixed [B, H, W, C] and lam [N]; got {sources.shape}, {masks.shape}, "
        f"{mixed.shape}, {lam.shape}.")
  b, n, h, w = masks.shape
  fig = mpl_figure.Figure(
      figsize=(tile_inches * (2 * n + 1) + 2.6, tile_inches * b + 1.0),
      dpi=dpi)
  grid = fig.add_gridspec(1, 4, width_ratios=(n, n, 1, 0.12), wspace=0.08,
                          left=0.1, right=0.88, top=1 - 0.75 / (b + 1),
                          bottom=0.02)
  ax_src, ax_mask, ax_mix = (fig.add_subplot(grid[0, i]) for i in range(3))
  ax_bar = fig.add_subplot(grid[0, 3])
  ax_src.imshow(_tile(_to_rgb(sources, mean, std), 1.0))
  gray = colormaps["gray"].with_extremes(bad=(0.55, 0.75, 1.0))  # separators
  mask_im = ax_mask.imshow(_tile(masks.astype(np.float32), np.nan), cmap=gray,
                           vmin=0.0, vmax=1.0, interpolation="nearest")
  ax_mix.imshow(_tile(_to_rgb(mixed, mean, std)[:, None], 1.0))
  centres = lambda k, size: [(size + _PAD) * i + size / 2 for i in range(k)]
  heads = [f"x{i}: {'own image' if i == 0 else 'partner'}\nλ={float(lam[i]):.2f}"
           for i in range(n)]
  for ax, names in ((ax_src, heads),
                    (ax_mask, [f"mask {i}" + (" (own)" if i == 0 else "")
                               for i in range(n)]),
                    (ax_mix, ["mixed"])):
    ax.xaxis.tick_top()
    ax.set_xticks(centres(len(names), w), names, fontsize=7)
    ax.tick_params(length=0)
    ax.set_yticks([])
  if labels is not None:
    rows = [class_names[int(c)] if class_names is not None
            and int(c) < len(class_names) else f"class {int(c)}"
            for c in labels]
    ax_src.set_yticks(centres(b, h), rows, fontsize=7)
  cbar = fig.colorbar(mask_im, cax=ax_bar)
  cbar.set_label("mask i: weight of x_i\n(white = all x_i; mask 0 white = "
                 "own image)", fontsize=7)
  cbar.ax.tick_params(labelsize=6)
  head = "each row: one mixed sample; x0 is the sample's own image"
  fig.suptitle(f"{title}\n{head}" if title else head, fontsize=8)
  return fig


class MaskImages:
  """TensorBoard images of the generator's masks on a fixed test batch.

  Built once per run (``from_config``); ``render(state)`` runs the jitted
  ``method.preview_masks`` (on every process: it is a global computation) and,
  on process 0, returns ``{IMAGE_TAG: uint8 [H, W, 3]}`` of ``mask_figure``.

  Args:
    method: a learned method (``preview_masks``, ``preview_sources``).
    images: uint8 ``[B, H, W, C]`` test images, B >= N; the same on every
      process (process 0's are used).
    labels: int ``[B]``.
    every: log every this many steps (> 0).
    mesh: the run's mesh (the batch is replicated on it).
    normalize: the eval ``Augment`` (``data.augment_from_config(train=False)``).
    class_names: optional names for the row labels.
  """

  def __init__(self, method: Any, images: np.ndarray, labels: np.ndarray, *,
               every: int, mesh: jax.sharding.Mesh, normalize: Any,
               class_names: Sequence[str] | None = None):
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
      raise ValueError(f"`every` must be an int >= 1; got {every!r}.")
    images, labels = np.asarray(images), np.asarray(labels)
    if jax.process_count() > 1:
      # Per-process sources (TFDS on a pod) hold different examples: all
      # processes take process 0's, so the replicated batch is one batch.
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      images, labels = multihost_utils.broadcast_one_to_all((images, labels))
      images, labels = np.asarray(images), np.asarray(labels)
    self.every = every
    self.labels = labels
    self._method = method
    self._mean, self._std = normalize.mean, normalize.std
    self._class_names = class_names
    repl = sharding.replicated(mesh)
    raw = jax.make_array_from_callback(images.shape, repl,
                                       lambda idx: images[idx])
    self._images = normalize.device(raw, sharding=repl)
    self._fn = jax.jit(method.preview_masks, out_shardings=repl)

  @classmethod
  def from_config(cls, config: Any, method: Any, test_source: Any,
                  mesh: jax.sharding.Mesh) -> "MaskImages | None":
    """None when ``config.log_images_every_steps`` is 0 or TensorBoard is off.

    Reads the first ``50 * NUM_IMAGES`` test examples and keeps
    ``NUM_IMAGES`` (at least N) of as many classes as possible.
    """
    from automix_jax import data as data_lib  # pylint: disable=import-outside-toplevel
    every = config.get("log_images_every_steps", 0)
    if not every or not config.get("tensorboard", True):
      return None
    num = max(NUM_IMAGES, method.preview_sources)
    if len(test_source) < num:
      raise ValueError(
          f"`config.log_images_every_steps` needs {num} test images; the test "
          f"split has {len(test_source)}. Set it to 0.")
    head = test_source[np.arange(min(len(test_source), _SCAN * num))]
    pick = data_lib.distinct_class_indices(head["label"], num)
    names = (data_lib.CIFAR10_CLASSES
             if config.data.name == data_lib.ARCHIVE_NAME else None)
    normalize = data_lib.augment_from_config(config.data, train=False)
    images = head["image"]
    if data_lib.variable_size(test_source):
      # Images of different sizes: the eval resize + centre crop on the host
      # makes them one batch (the device half then only normalises).
      normalize = normalize.for_variable_size()
      images = normalize.host([images[int(i)] for i in pick], None)
    else:
      images = images[pick]
    return cls(method, images, head["label"][pick], every=every, mesh=mesh,
               normalize=normalize, class_names=names)

  def due(self, step: int) -> bool:
    return step % self.every == 0

  def render(self, state: Any, *, title: str = "") -> dict:
    """``{IMAGE_TAG: uint8 [H, W, 3]}`` on process 0, ``{}`` elsewhere."""
    result = jax.device_get(self._fn(state, self._images))
    if jax.process_index() != 0:
      return {}
    fig = mask_figure(result, mean=self._mean, std=self._std,
                      labels=self.labels, class_names=self._class_names,
                      title=title, dpi=72)
    return {IMAGE_TAG: metrics_lib.figure_to_rgb(fig)}
