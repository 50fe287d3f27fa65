r"""The memorization summary of a run (docs/design.md §4): from the per-example scores (analysis/scores.py),
the capacity per layer, the noisy-vs-clean AUC, the image grid and an external correlation, written to
``DIR/memorization.json`` (which the report shows).

  capacity   the mean chance-corrected random-label accuracy over K independent label draws
             (``config.rlp.num_heads=K``) with a bootstrap confidence interval: an empirical
             Rademacher-style estimate of how much arbitrary labeling the representation can fit
             (analysis/score_stats.py)
  AUC        ROC AUC of the score for noisy vs clean examples (with label noise only)
  grid       the k most / least memorized examples per class (analysis/image_grid.py)
  external   Spearman correlation with an external per-example score keyed by index, after checking
             that both agree on the class labels (analysis/external_scores.py)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from rlp_jax.analysis import external_scores, image_grid, score_stats, scores
from rlp_jax.infra import rundir

SUMMARY_FILE = "memorization.json"


def analyze(
  workdir: str,
  data: Mapping[str, np.ndarray],
  *,
  kind: str = "p_own",
  layer: str | None = None,
  k: int = 8,
  images: np.ndarray | None = None,
  external: tuple | None = None,
  num_boot: int = 1000,
) -> dict:
  """Capacity per layer, noisy-vs-clean AUC, the image grid and the external correlation -> a dict
  (also written to ``DIR/memorization.json``). ``data`` is what ``scores.compute`` wrote; everything is
  of its last checkpoint. ``external`` is ``external_scores.load_external``'s ``(index, score, labels)``."""
  layers = [str(x) for x in data["layers"]]
  layer = layer or layers[-1]
  values = scores.score(data, kind, layer)
  scored = data["scored"]
  out: dict = {"score": kind, "layer": layer, "step": int(data["steps"][-1]), "capacity": {}}
  for name in layers:
    correct = data[f"correct/{name}"][-1][scored]
    out["capacity"][name] = score_stats.capacity(correct, int(data["num_labels"]), num_boot=num_boot)
  if data["is_noisy"][scored].any():
    out["noisy_vs_clean_auc"] = score_stats.roc_auc(values[scored], data["is_noisy"][scored])
  if images is not None:
    grid = os.path.join(workdir, f"memorization_grid_{layer}.png")
    selection = image_grid.select_per_class(values, data["label"], k)
    image_grid.save_image_grid(
      grid, images, selection, values, title=f"{kind} of the own random label, {layer}, step {out['step']}"
    )
    out["image_grid"] = grid
  if external is not None:
    out["external"] = external_scores.correlate_external(data, values, *external)
  rundir.atomic_write(os.path.join(workdir, SUMMARY_FILE), json.dumps(out, indent=2))
  return out
