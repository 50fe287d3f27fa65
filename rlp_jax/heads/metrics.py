"""Random-label accuracy as reported: per head, its chance level 1/n and the chance-corrected value."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def accuracy_metrics(per_head: Mapping[str, np.ndarray], num_labels: int, prefix: str = "rlp") -> dict:
  """``<prefix>/<layer>/{accuracy,chance,chance_corrected}`` (mean over heads) and per-head accuracies.

  With several heads, also ``<prefix>/<layer>/head_<k>/accuracy``.
  """
  out = {}
  for name, acc in per_head.items():
    acc = np.asarray(acc, np.float64)
    out[f"{prefix}/{name}/accuracy"] = float(acc.mean())
    out[f"{prefix}/{name}/chance"] = 1.0 / num_labels
    out[f"{prefix}/{name}/chance_corrected"] = float(chance_corrected(acc.mean(), num_labels))
    if acc.size > 1:
      out.update({f"{prefix}/{name}/head_{j}/accuracy": float(a) for j, a in enumerate(acc)})
  return out


def chance_corrected(accuracy, num_labels: int):
  """``(acc - 1/n) / (1 - 1/n)``: 0 at chance, 1 at perfect memorization."""
  chance = 1.0 / num_labels
  return (accuracy - chance) / (1.0 - chance)
