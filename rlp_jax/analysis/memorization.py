r"""The memorization summary of a run (docs/design.md §4), written to ``DIR/memorization.json``.

From the per-example scores (analysis/scores.py): the capacity per layer, the noisy-vs-clean AUC, the image
grid and an external correlation. The report shows ``DIR/memorization.json``.

  capacity   the mean chance-corrected random-label accuracy over K independent label draws
             (``config.rlp.num_heads=K``) with a bootstrap confidence interval: an empirical
             Rademacher-style estimate of how much arbitrary labeling the representation can fit
             (analysis/score_stats.py)
  AUC        ROC AUC of the score for noisy vs clean examples (with label noise only), and
             ``noisy_vs_clean``: the AUC with a bootstrap interval of every score at every scored
             checkpoint — the RLP heads' (averaged over heads, and one head alone), offline heads' where
             computed, and the baseline, the classifier's own loss on the trained-on label — with the best
             of them as ``noisy_vs_clean_best`` (docs/results.md: the class loss separates, the RLP
             scores do not)
  grid       the k most / least memorized examples per class (analysis/image_grid.py)
  external   Spearman correlation with an external per-example score keyed by index, after checking
             that both agree on the class labels (analysis/external_scores.py)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from rlp_jax.analysis import external_scores, ground_truth_stats, image_grid, score_stats, scores
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
  ground: Mapping[str, np.ndarray] | None = None,
  num_boot: int = 1000,
) -> dict:
  """Capacity per layer, noisy-vs-clean AUC, the image grid and the external correlation -> a dict.

  The dict is also written to ``DIR/memorization.json``. ``data`` is what ``scores.compute`` wrote; everything
  is of its last checkpoint. ``external`` is ``external_scores.load_external``'s ``(index, score, labels)``.
  """
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
    out["noisy_vs_clean"] = noisy_vs_clean(data, num_boot=num_boot)
    out["noisy_vs_clean_best"] = max(out["noisy_vs_clean"], key=lambda r: r["auc"])
  if images is not None:
    grid = os.path.join(workdir, f"memorization_grid_{layer}.png")
    selection = image_grid.select_per_class(values, data["label"], k)
    image_grid.save_image_grid(
      grid, images, selection, values, title=f"{kind} of the own random label, {layer}, step {out['step']}"
    )
    out["image_grid"] = grid
  if external is not None:
    out["external"] = external_scores.correlate_external(data, values, *external)
  if ground is not None:
    out["fit_of_training_labels"] = fit_of_training_labels(data)
    out["ground_truth"] = ground_truth_stats.correlate(data, ground, score_variants(data), num_boot=num_boot)
  rundir.atomic_write(os.path.join(workdir, SUMMARY_FILE), json.dumps(out, indent=2))
  return out


def score_variants(data: Mapping[str, np.ndarray]) -> list[tuple[str, str | None, int | None]]:
  """``(kind, layer, head)`` of every score the noisy-vs-clean table compares.

  Per layer: the RLP heads' p_own and margin averaged over heads, p_own of head 0 alone when there are
  several, the offline heads' p_own where computed; then the class loss (no layer).
  """
  out = []
  for layer in (str(x) for x in data["layers"]):
    out += [("p_own", layer, None), ("margin", layer, None)]
    if data[f"p_own/{layer}"].shape[-1] > 1:
      out.append(("p_own", layer, 0))
    if f"offline_p_own/{layer}" in data:
      out.append(("offline_p_own", layer, None))
    if f"probe_margin/{layer}" in data:
      out.append(("probe_margin", layer, None))
  if "class_loss" in data:
    out.append(("class_loss", None, None))
  return out


def noisy_vs_clean(data: Mapping[str, np.ndarray], *, num_boot: int = 1000) -> list[dict]:
  """ROC AUC (noisy = positive) with its bootstrap interval, for every score variant at every checkpoint.

  An AUC of 0.5 is no separation; above 0.5 noisy examples score higher. Every row is one score, so
  picking the best of many rows favours a lucky one a little; the intervals say by how much it could."""
  scored = data["scored"]
  noisy = data["is_noisy"][scored]
  rows = []
  for pos, step in enumerate(np.asarray(data["steps"])):
    for kind, layer, head in score_variants(data):
      values = scores.score(data, kind, layer, step=int(step), head=head)[scored]
      heads = data[f"p_own/{layer}"].shape[-1] if layer else 0
      rows.append(
        {
          "score": kind,
          "layer": layer,
          "heads": score_stats.heads_label(layer, head, mean=f"mean of {heads}"),
          "step": int(step),
          "epoch": float(data["epochs"][pos]),
          **score_stats.roc_auc_ci(values, noisy, num_boot=num_boot),
        }
      )
  return rows


def fit_of_training_labels(data: Mapping[str, np.ndarray]) -> dict:
  """How far the scored checkpoint has fitted the labels it trained on, overall and on noisy and clean ones.

  The fit is the class accuracy on those labels, from the class margin (> 0 iff predicted), overall and on the
  noisy and clean examples: the regime a per-example reading belongs to (before the noise is fitted, the
  class loss flags noisy labels; after, it cannot).
  """
  if "class_margin" not in data:
    return {}
  scored = data["scored"]
  fitted = np.asarray(data["class_margin"][-1], np.float64)[scored] > 0
  noisy = data["is_noisy"][scored]
  out = {"step": int(data["steps"][-1]), "train_accuracy": float(fitted.mean())}
  if noisy.any():
    out.update(noisy_accuracy=float(fitted[noisy].mean()), clean_accuracy=float(fitted[~noisy].mean()))
  return out
