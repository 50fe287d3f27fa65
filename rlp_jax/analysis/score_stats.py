"""Statistics of per-example scores (docs/design.md §4): rank correlation, top-k overlap, AUC and capacity.

The rank correlation, the noisy-vs-clean ROC AUC and the capacity estimate each come with a bootstrap
interval.

Spearman and the AUC are the libraries' own (scipy, scikit-learn); what is ours is the handling of missing
values: examples not scored (NaN) are dropped rather than ranked.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats
from sklearn import metrics


def finite_pairs(a, b) -> tuple[np.ndarray, np.ndarray]:
  """``a``, ``b`` (same shape) without the positions where either is NaN or infinite."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
  ok = np.isfinite(a) & np.isfinite(b)
  return a[ok], b[ok]


def spearman(a, b) -> float:
  """Spearman's rank correlation (average ranks for ties) over the pairs where both are finite.

  NaN with fewer than two such pairs or a constant side.
  """
  a, b = finite_pairs(a, b)
  if len(a) < 2:
    return float("nan")
  with warnings.catch_warnings():  # a constant input: NaN is the answer, not a warning per call
    warnings.simplefilter("ignore", stats.ConstantInputWarning)
    return float(stats.spearmanr(a, b).statistic)


def spearman_ci(a, b, *, num_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
  """``spearman`` with a percentile-bootstrap interval (example pairs resampled with replacement).

  A resample's ties (the repeated examples) are ranked by their average rank, as in ``spearman``.
  """
  a, b = finite_pairs(a, b)
  rho = spearman(a, b)
  out = {"spearman": rho, "ci_low": float("nan"), "ci_high": float("nan"), "level": level, "num": len(a)}
  if not np.isfinite(rho):
    return out
  draws = np.random.default_rng(seed).integers(0, len(a), (num_boot, len(a)))
  ra, rb = stats.rankdata(a[draws], axis=1), stats.rankdata(b[draws], axis=1)
  ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
  with np.errstate(invalid="ignore", divide="ignore"):
    boots = (ra * rb).sum(1) / np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
  boots = boots[np.isfinite(boots)]
  out["ci_low"], out["ci_high"] = (
    float(q) for q in np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
  )
  return out


def top_k_overlap(a, b, k: int) -> float:
  """Share of the ``k`` highest of ``a`` that are also among the ``k`` highest of ``b``.

  Finite pairs only; chance is k / M.
  """
  a, b = finite_pairs(a, b)
  k = min(k, len(a))
  if k < 1:
    return float("nan")
  top_a = np.argsort(-a, kind="stable")[:k]
  top_b = np.argsort(-b, kind="stable")[:k]
  return float(len(np.intersect1d(top_a, top_b)) / k)


def roc_auc(score_values, positive) -> float:
  """Area under the ROC curve of ``score`` for ``positive`` vs the rest.

  The probability that a random positive scores above a random negative, ties counting one half. Unscored
  (NaN) examples are dropped; NaN when either class is absent.
  """
  s = np.asarray(score_values, np.float64)
  pos = np.asarray(positive, bool)
  ok = np.isfinite(s)
  s, pos = s[ok], pos[ok]
  if pos.all() or not pos.any():
    return float("nan")
  return float(metrics.roc_auc_score(pos, s))


def roc_auc_ci(
  score_values, positive, *, num_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
  """``roc_auc`` with a percentile-bootstrap interval (examples resampled with replacement).

  Vectorized over the resamples: a resample is a count per example, and its AUC is the Mann-Whitney sum
  with those counts as weights (each positive's weight times the negative weight below it, plus half the
  negative weight tied with it), from one sort of the scores, so 1000 resamples of digits take milliseconds.
  """
  s = np.asarray(score_values, np.float64)
  pos = np.asarray(positive, bool)
  ok = np.isfinite(s)
  s, pos = s[ok], pos[ok]
  auc = roc_auc(s, pos)
  if not np.isfinite(auc):
    return {"auc": auc, "ci_low": float("nan"), "ci_high": float("nan"), "level": level}
  order = np.argsort(s, kind="stable")
  s, pos = s[order], pos[order]
  # Each example's tie group, by its first and last position in sorted order.
  first = np.searchsorted(s, s, "left")
  last = np.searchsorted(s, s, "right") - 1
  m = len(s)
  draws = np.random.default_rng(seed).integers(0, m, (num_boot, m))
  counts = np.bincount((draws + m * np.arange(num_boot)[:, None]).ravel(), minlength=num_boot * m)
  counts = counts.reshape(num_boot, m)
  neg_w = counts * ~pos
  cum = np.cumsum(neg_w, 1)
  below = cum[:, first] - neg_w[:, first]
  tied = cum[:, last] - below
  pos_w = counts * pos
  with np.errstate(invalid="ignore", divide="ignore"):
    boots = (pos_w * (below + 0.5 * tied)).sum(1) / (pos_w.sum(1) * neg_w.sum(1))
  boots = boots[np.isfinite(boots)]  # a resample without one of the classes has no AUC
  lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
  return {"auc": auc, "ci_low": float(lo), "ci_high": float(hi), "level": level}


def capacity(correct, num_labels: int, *, num_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
  """Empirical Rademacher-style capacity from K independent random-label draws.

  ``correct`` (M, K): whether head k (its own label draw) predicts example i's random label. The estimate
  is the mean over heads of the chance-corrected accuracy ``(acc - 1/n) / (1 - 1/n)`` (0 = chance,
  1 = every arbitrary labeling fitted). The interval is a percentile bootstrap that resamples examples
  and label draws (heads) together: both are samples, and a K = 1 estimate is as uncertain as its one draw.
  """
  c = np.asarray(correct, np.float64)
  if c.ndim == 1:
    c = c[:, None]
  m, k = c.shape
  chance = 1.0 / num_labels

  def corrected(acc):
    return (acc - chance) / (1.0 - chance)

  rng = np.random.default_rng(seed)
  boots = np.empty(num_boot)
  for b in range(num_boot):
    rows, cols = rng.integers(0, m, m), rng.integers(0, k, k)
    boots[b] = corrected(c[rows][:, cols].mean())
  lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
  per_head = c.mean(0)
  return {
    "estimate": float(corrected(per_head.mean())),
    "ci_low": float(lo),
    "ci_high": float(hi),
    "level": level,
    "accuracy": float(per_head.mean()),
    "chance": chance,
    "num_heads": k,
    "num_examples": m,
    "per_head_accuracy": per_head.tolist(),
  }


def heads_label(layer: str | None, head: int | None, *, mean: str) -> str:
  """The ``heads`` column of a score table.

  Empty for a score without heads, ``head i`` for one head, ``mean`` (as the caller words it) for their mean.
  """
  if layer is None:
    return ""
  return mean if head is None else f"head {head}"
