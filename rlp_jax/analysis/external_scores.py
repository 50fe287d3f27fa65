"""Per-example scores from elsewhere, keyed by the dataset index, and their rank correlation with ours.

The scores are e.g. Feldman & Zhang's memorization estimates (docs/design.md §4).

The index is the only key (docs/design.md §2): an external file in another example order would correlate
two unrelated lists, so when it carries class labels they are checked against ours first.
"""

from __future__ import annotations

import csv
import os
import zipfile
from collections.abc import Mapping

import numpy as np

from rlp_jax.analysis import score_stats
from rlp_jax.infra.errors import UserError


def load_external(path: str, score_key: str = "score", label_key: str = "label", index_key: str = "index"):
  """``(index, score, labels or None)`` from ``.npz`` / ``.npy`` / ``.csv``.

  ``.npz``: arrays ``score_key`` (and optionally ``index_key``, ``label_key``); without an index the
  array order is taken as the index (e.g. Feldman & Zhang's ``cifar100_infl_matrix.npz`` with
  ``--external_score_key=tr_mem --external_label_key=tr_labels``). ``.npy``: the scores, in index order.
  ``.csv``: a header with ``index_key``, ``score_key`` and optionally ``label_key`` columns.
  """
  ext = os.path.splitext(path)[1].lower()
  if ext not in (".npz", ".npy", ".csv"):
    raise UserError(f"--external={path}: must be a .npz, .npy or .csv file.")
  if not os.path.isfile(path):
    raise UserError(f"--external={path}: no such file.")
  try:
    return _read(path, ext, score_key, label_key, index_key)
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
    if isinstance(e, UserError):
      raise
    raise UserError(f"--external={path}: not a readable {ext} file ({type(e).__name__}: {e}).") from None


def _read(path: str, ext: str, score_key: str, label_key: str, index_key: str):
  labels = None
  if ext == ".npz":
    with np.load(path) as f:
      if score_key not in f:
        raise UserError(f"{path} has no array {score_key!r} (it has {f.files}); pass its score key.")
      s = np.asarray(f[score_key], np.float64)
      index = np.asarray(f[index_key]) if index_key in f else np.arange(len(s))
      labels = np.asarray(f[label_key]) if label_key in f else None
  elif ext == ".npy":
    s = np.load(path).astype(np.float64)
    index = np.arange(len(s))
  elif ext == ".csv":
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
    if not rows or index_key not in rows[0] or score_key not in rows[0]:
      raise UserError(f"{path} needs columns {index_key!r} and {score_key!r}.")
    index = np.asarray([int(r[index_key]) for r in rows])
    s = np.asarray([float(r[score_key]) for r in rows])
    if label_key in rows[0]:
      labels = np.asarray([int(r[label_key]) for r in rows])
  else:
    raise UserError(f"{path}: use a .npz, .npy or .csv file.")
  return index.astype(np.int64), s, labels


def correlate_external(
  data: Mapping[str, np.ndarray],
  ours: np.ndarray,
  index: np.ndarray,
  external: np.ndarray,
  external_labels: np.ndarray | None = None,
  *,
  min_label_agreement: float = 0.99,
) -> dict:
  """Spearman correlation of our per-example score with an external one keyed by index.

  When the external file has class labels, they are compared with ours first: the same examples in the
  same order agree on (nearly) every label; a file in another order agrees on about 1/num_classes of them,
  and is refused instead of yielding a meaningless correlation.
  """
  m = len(ours)
  index = np.asarray(index, np.int64)
  if index.min() < 0 or index.max() >= m:
    raise UserError(f"external indices span [{index.min()}, {index.max()}]; the dataset has {m} examples.")
  theirs = np.full(m, np.nan)
  theirs[index] = external
  out: dict = {}
  if external_labels is not None:
    scored = data["scored"][index]
    agree = float(np.mean(np.asarray(external_labels)[scored] == data["label"][index][scored]))
    out["label_agreement"] = agree
    if agree < min_label_agreement:
      raise UserError(
        f"The external file's class labels agree with the dataset's on only {agree:.1%} of the examples: "
        "its example order is not the dataset index. Reorder it (or give its index column) first."
      )
  a, _ = score_stats.finite_pairs(ours, theirs)
  out.update(spearman=score_stats.spearman(ours, theirs), num_examples=len(a))
  return out
