"""The k most and least memorized training images of each class, as one picture (docs/design.md §4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def select_per_class(
  values: np.ndarray, labels: np.ndarray, k: int
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """``{class: (k most memorized indices, highest first; k least memorized, lowest first)}``.

  Unscored examples (NaN) are never selected; ties are broken by index, so the choice is deterministic.
  """
  out = {}
  values = np.asarray(values, np.float64)
  for c in np.unique(labels[labels >= 0]):
    idx = np.flatnonzero((labels == c) & np.isfinite(values))
    most = idx[np.lexsort((idx, -values[idx]))][:k]
    least = idx[np.lexsort((idx, values[idx]))][:k]
    out[int(c)] = (most, least)
  return out


def load_train_images(config, info=None) -> np.ndarray:
  """The (eval-mode) training images, by index: (m, H, W, C) float32, zeros where not in the train set."""
  from rlp_jax.data import input_pipeline

  info = info or input_pipeline.get_info(config)
  images = None
  for batch in input_pipeline.eval_batches(config, info, "train_eval", 0, limit=-1):
    real = batch["mask"]
    if images is None:
      images = np.zeros((info.num_train,) + batch["image"].shape[1:], np.float32)
    images[batch["index"][real]] = batch["image"][real]
  return images


def _tile(img: np.ndarray) -> np.ndarray:
  """One image as RGB in [0, 1]: min-max scaled on its own, since inputs arrive normalized."""
  img = np.asarray(img, np.float32)
  if img.ndim == 2:
    img = img[..., None]
  lo, hi = img.min(), img.max()
  img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
  return np.repeat(img, 3, -1) if img.shape[-1] == 1 else img[..., :3]


def save_image_grid(
  path: str,
  images: np.ndarray,
  selection: Mapping[int, tuple[np.ndarray, np.ndarray]],
  values: np.ndarray,
  *,
  class_names: Sequence[str] | None = None,
  title: str = "",
) -> np.ndarray:
  """One row per class: its k most memorized examples, a gap, its k least memorized. Returns the mosaic."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  classes = sorted(selection)
  k = max(max(len(a), len(b)) for a, b in selection.values())
  h, w = images.shape[1:3]
  pad, gap = 1, max(w // 2, 2)
  cell_w, cell_h = w + pad, h + pad
  mosaic = np.ones((len(classes) * cell_h, 2 * k * cell_w + gap, 3), np.float32)
  for r, c in enumerate(classes):
    for side, idx in enumerate(selection[c]):
      for j, i in enumerate(idx):
        x0 = side * (k * cell_w + gap) + j * cell_w
        mosaic[r * cell_h : r * cell_h + h, x0 : x0 + w] = _tile(images[i])
  fig_w = max(6.0, mosaic.shape[1] / mosaic.shape[0] * 0.45 * len(classes) + 1.5)
  fig, ax = plt.subplots(figsize=(fig_w, 0.45 * len(classes) + 1.2), dpi=120)
  ax.imshow(mosaic, interpolation="nearest")
  ax.set_yticks([r * cell_h + h / 2 for r in range(len(classes))])
  ax.set_yticklabels([class_names[c] if class_names else str(c) for c in classes])
  ax.set_xticks([k * cell_w / 2, k * cell_w + gap + k * cell_w / 2])
  ax.set_xticklabels([f"{k} most memorized (highest first)", f"{k} least memorized (lowest first)"])
  ax.set_ylabel("class")
  ax.tick_params(length=0)
  for s in ax.spines.values():
    s.set_visible(False)
  if title:
    ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return mosaic
