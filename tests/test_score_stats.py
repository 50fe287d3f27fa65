"""analysis/score_stats.py against hand-computed values: rank correlation, ROC AUC, intervals, capacity."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics

from rlp_jax.analysis import score_stats


def test_spearman_matches_hand_computed_values():
  # Ranks of b (ties averaged): 5->1, 6->2, 7->3.5, 8->5, 7->3.5. Centered: a (-2,-1,0,1,2),
  # b (-2,-1,.5,2,.5); sum of products 8, sums of squares 10 and 9.5: rho = 8 / sqrt(95).
  assert score_stats.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / np.sqrt(95))
  # Without ties, 1 - 6 sum(d^2) / (n (n^2 - 1)): rank differences (-1, 1, -1, 1, 0), so 1 - 24/120 = 0.8.
  assert score_stats.spearman([1, 2, 3, 4, 5], [20, 10, 40, 30, 50]) == pytest.approx(0.8)
  assert score_stats.spearman([1, 2, 3], [10, 20, 1000]) == pytest.approx(1.0)  # monotone, not linear
  assert score_stats.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
  # Non-finite pairs (unscored examples) are dropped, on either side: the same as without them. Kept,
  # the NaN at (nan, 0) would break the perfect anti-correlation of the rest.
  assert score_stats.spearman([1, np.nan, 2, 3, 4], [3, 0, 2, 1, np.inf]) == pytest.approx(-1.0)
  assert np.isnan(score_stats.spearman([1, np.nan], [2, 3]))  # one pair left
  assert np.isnan(score_stats.spearman([1, 2, 3], [5, 5, 5]))  # a constant side has no ranks to correlate
  with pytest.raises(ValueError, match="shapes"):
    score_stats.spearman([1, 2], [1, 2, 3])


def test_roc_auc_matches_hand_computed_values():
  # Positives 0.9, 0.4; negatives 0.5, 0.1, 0.4. Pairs won: 0.9 beats all three (3); 0.4 beats 0.1 (1),
  # ties 0.4 (1/2), loses to 0.5: (3 + 1.5) / 6 = 0.75.
  assert score_stats.roc_auc([0.9, 0.4, 0.5, 0.1, 0.4], [1, 1, 0, 0, 0]) == pytest.approx(0.75)
  assert score_stats.roc_auc([3, 2, 1], [1, 0, 0]) == 1.0
  assert score_stats.roc_auc([3, 2, 1], [0, 0, 1]) == 0.0
  assert score_stats.roc_auc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5
  assert np.isnan(score_stats.roc_auc([1, 2], [1, 1]))
  # The unscored (NaN) positive is dropped, not ranked: the one left beats both negatives.
  assert score_stats.roc_auc([0.9, np.nan, 0.2, 0.5], [1, 1, 0, 0]) == 1.0
  assert np.isnan(score_stats.roc_auc([0.9, np.nan, 0.2], [0, 1, 0]))  # its only positive was unscored


def test_roc_auc_interval_is_the_percentile_of_the_resampled_aucs():
  # The vectorized bootstrap against scikit-learn's AUC on the same resamples (drawn into the scores'
  # sorted order, as roc_auc_ci draws them), ties included.
  rng = np.random.default_rng(3)
  s = np.round(rng.normal(size=300), 1)
  noisy = rng.random(300) < 0.25
  s[noisy] += 0.4
  out = score_stats.roc_auc_ci(s, noisy, num_boot=200, level=0.9, seed=7)
  order = np.argsort(s, kind="stable")
  draws = np.random.default_rng(7).integers(0, 300, (200, 300))
  boots = [metrics.roc_auc_score(noisy[order][d], s[order][d]) for d in draws]
  assert out["auc"] == pytest.approx(metrics.roc_auc_score(noisy, s))
  np.testing.assert_allclose([out["ci_low"], out["ci_high"]], np.quantile(boots, [0.05, 0.95]), rtol=1e-12)
  assert out["ci_low"] < out["auc"] < out["ci_high"]
  perfect = score_stats.roc_auc_ci([3.0, 2.0, 1.0, 0.0], [1, 1, 0, 0], num_boot=50)
  assert (perfect["auc"], perfect["ci_low"], perfect["ci_high"]) == (1.0, 1.0, 1.0)


def test_capacity_estimate_and_bootstrap_interval():
  rng = np.random.default_rng(0)
  m, k, n = 2000, 4, 10
  # Every head gets exactly 55% right: chance-corrected (0.55 - 0.1) / 0.9 = 0.5.
  correct = np.zeros((m, k), bool)
  for j in range(k):
    correct[rng.permutation(m)[: int(0.55 * m)], j] = True
  cap = score_stats.capacity(correct, n, num_boot=400)
  assert cap["estimate"] == pytest.approx(0.5) and cap["accuracy"] == pytest.approx(0.55)
  assert cap["ci_low"] < 0.5 < cap["ci_high"] and cap["ci_high"] - cap["ci_low"] < 0.08
  assert cap["chance"] == 0.1 and cap["num_heads"] == k
  # Guessing at chance: the estimate is ~0 and its interval covers 0.
  guess = rng.integers(0, n, (m, k)) == rng.integers(0, n, (m, k))
  cap = score_stats.capacity(guess, n, num_boot=400)
  assert abs(cap["estimate"]) < 0.03 and cap["ci_low"] < 0 < cap["ci_high"]
  # More label draws narrow the interval.
  wide = score_stats.capacity(correct[:200, :1], n, num_boot=400)
  assert wide["ci_high"] - wide["ci_low"] > cap["ci_high"] - cap["ci_low"]


def test_heads_label_names_one_head_or_the_mean():
  assert score_stats.heads_label(None, None, mean="mean") == ""
  assert score_stats.heads_label("pre_logits", 2, mean="mean") == "head 2"
  assert score_stats.heads_label("pre_logits", None, mean="mean of 4") == "mean of 4"
