"""A Feldman-Zhang ground-truth file and what is computed from it, in NumPy alone (docs/design.md §4).

``estimates`` turns the ensemble's (K, M) correctness and membership into ``mem`` (analysis/ground_truth.py
trains the ensemble and writes the file); ``load`` reads the file, ``check_aligned`` checks it describes a
run's examples, ``describe`` summarizes it, ``correlate`` sets every RLP score against it. Apart from the
training, so that the memorization command reads a ground truth without starting JAX.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Mapping

import numpy as np

from rlp_jax.analysis import score_stats
from rlp_jax.infra.errors import UserError


def estimates(correct: np.ndarray, in_mask: np.ndarray, *, num_boot: int = 1000, seed: int = 0) -> dict:
  """Per-example estimates ``mem = p_in - p_out`` from (K, M) correctness and membership.

  Returns, per example (M,): ``mem``, ``p_in``, ``p_out``, ``num_in``, ``num_out``, and
  ``mem_low``/``mem_high``: a 95% percentile-bootstrap interval that resamples the K models (vectorized: a
  resample is a count per model). NaN where an example was never (or always) held out.
  """
  c, inn = np.asarray(correct, np.float64), np.asarray(in_mask, np.float64)
  out = 1.0 - inn

  def mem(w):  # w: (..., K) model weights
    n_in, n_out = w @ inn, w @ out
    with np.errstate(invalid="ignore", divide="ignore"):
      p_in, p_out = (w @ (c * inn)) / n_in, (w @ (c * out)) / n_out
    return p_in - p_out, p_in, p_out, n_in, n_out

  m, p_in, p_out, n_in, n_out = mem(np.ones(len(c)))
  res = {"mem": m, "p_in": p_in, "p_out": p_out, "num_in": n_in, "num_out": n_out}
  counts = np.random.default_rng(seed).multinomial(len(c), np.full(len(c), 1.0 / len(c)), size=num_boot)
  boot = mem(counts.astype(np.float64))[0]
  with warnings.catch_warnings():  # an example never held out by any model: NaN is the answer
    warnings.simplefilter("ignore", RuntimeWarning)
    res["mem_low"], res["mem_high"] = np.nanpercentile(boot, [2.5, 97.5], axis=0)
  return res


def load(path: str) -> dict[str, np.ndarray]:
  """A ground-truth file's arrays; refused in one line if it is not one."""
  try:
    with np.load(path, allow_pickle=False) as f:
      data = {k: f[k] for k in f.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(  # noqa: B904 (one line for the user; the library's exception is in the text)
      f"--ground_truth={path}: not a readable .npz ({e}); recompute it with rlp_jax.ground_truth."
    )
  missing = [k for k in ("mem", "in_mask", "correct", "train_label") if k not in data]
  if missing:
    raise UserError(
      f"--ground_truth={path}: no {missing}; it was not written by python -m rlp_jax.ground_truth."
    )
  return data


def check_aligned(ground: Mapping[str, np.ndarray], scores: Mapping[str, np.ndarray]) -> None:
  """The ground truth and the scores describe the same examples with the same training labels."""
  if len(ground["mem"]) != len(scores["scored"]):
    raise UserError(
      f"the ground truth covers {len(ground['mem'])} examples, the scores {len(scores['scored'])}: "
      "they are of different datasets."
    )
  both = ground["scored"] & scores["scored"] if "scored" in ground else scores["scored"]
  agree = float(np.mean(ground["train_label"][both] == scores["train_label"][both])) if both.any() else 0.0
  if agree < 1.0:
    raise UserError(
      f"the ground truth's training labels agree with the run's on {agree:.1%} of the examples: they were "
      "computed with another seed, label noise or dataset. Recompute it with the run's config."
    )


def describe(data: Mapping[str, np.ndarray]) -> str:
  """A few lines: the models' test accuracy, mem's spread and interval width, and the noisy examples' mem.

  The last only with label noise: the mean mem of noisy vs clean examples and the AUC of mem for the noisy
  ones (the planted memorized set).
  """
  scored = data["scored"]
  mem = data["mem"][scored]
  width = (data["mem_high"] - data["mem_low"])[scored]
  lines = [
    f"{len(data['correct'])} models on {data['rate']:.0%} subsets, {int(data['num_epochs'])} epochs: "
    "test accuracy "
    f"{np.mean(data['test_accuracy']):.4f}; mem mean {np.nanmean(mem):.4f}, share > 0.5 "
    f"{np.nanmean(mem > 0.5):.4f}; 95% interval width median {np.nanmedian(width):.3f}; models out per "
    f"example median {int(np.nanmedian(data['num_out'][scored]))}"
  ]
  noisy = data["is_noisy"][scored]
  if noisy.any():
    auc = score_stats.roc_auc(mem, noisy)
    lines.append(
      f"label noise: mem {np.nanmean(mem[noisy]):.4f} on the {int(noisy.sum())} noisy examples vs "
      f"{np.nanmean(mem[~noisy]):.4f} on the clean ones; noisy-vs-clean ROC AUC of mem {auc:.4f}"
    )
  return "\n".join(lines)


def correlate(
  scores_data: Mapping[str, np.ndarray],
  ground: Mapping[str, np.ndarray],
  variants,
  *,
  num_boot: int = 1000,
  top_share: float = 0.1,
) -> dict:
  """Every score variant at the last scored step against ``mem``: Spearman and top-share overlap.

  The variants are those of ``memorization.score_variants``. Spearman comes with a bootstrap interval over
  examples; the overlap is of the top ``top_share`` of examples (chance: ``top_share``). ``by_models``: the
  same for the first K' models' estimate, K' doubling up to K, so that one sees where the interval stops
  narrowing.
  """
  from rlp_jax.analysis import scores  # the per-example score file's reader

  check_aligned(ground, scores_data)
  both = scores_data["scored"] & ground.get("scored", scores_data["scored"]) & np.isfinite(ground["mem"])
  k_top = max(1, int(round(top_share * both.sum())))
  ours = {v: scores.score(scores_data, v[0], v[1], head=v[2]) for v in variants}
  mem = np.where(both, ground["mem"], np.nan)

  def rows(mem_values):
    out = []
    for (kind, layer, head), values in ours.items():
      values = np.where(both, values, np.nan)
      out.append(
        {
          "score": kind,
          "layer": layer,
          "heads": score_stats.heads_label(layer, head, mean="mean"),
          **score_stats.spearman_ci(values, mem_values, num_boot=num_boot),
          "top_overlap": score_stats.top_k_overlap(values, mem_values, k_top),
        }
      )
    return out

  num_models = len(ground["correct"])
  by_models = []
  k = 8
  while k < num_models:
    est = estimates(ground["correct"][:k], ground["in_mask"][:k], num_boot=1)
    by_models.append({"num_models": k, "rows": rows(np.where(both, est["mem"], np.nan))})
    k *= 2
  by_models.append({"num_models": num_models, "rows": rows(mem)})
  return {
    "step": int(scores_data["steps"][-1]),
    "num_models": num_models,
    "top_k": k_top,
    "top_chance": k_top / int(both.sum()),
    "rows": by_models[-1]["rows"],
    "by_models": by_models,
  }
