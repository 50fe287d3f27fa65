"""analysis/ground_truth.py: Feldman-Zhang memorization recovers a planted memorized set."""

from __future__ import annotations

import numpy as np
import pytest

from rlp_jax.analysis import ground_truth, ground_truth_stats, score_stats
from rlp_jax.infra.errors import UserError


def test_estimates_of_a_planted_set_with_intervals():
  """Synthetic correctness: planted examples are right exactly when held in (mem = 1), the others always
  (mem = 0); the bootstrap interval over models contains the truth and is narrow with many models."""
  masks = ground_truth.subset_masks(seed=3, num_models=200, num_examples=50, rate=0.7)
  assert (masks.sum(1) == 35).all()  # exact subsets
  planted = np.arange(50) < 10
  correct = np.where(planted, masks, True)
  est = ground_truth_stats.estimates(correct, masks)
  np.testing.assert_array_equal(est["mem"], np.where(planted, 1.0, 0.0))
  np.testing.assert_array_equal(est["p_out"], np.where(planted, 0.0, 1.0))
  assert (est["mem_low"] <= est["mem"]).all() and (est["mem"] <= est["mem_high"]).all()
  assert np.all(est["num_in"] + est["num_out"] == 200)


def test_bootstrap_interval_covers_the_truth_and_narrows_with_more_models():
  """Random correctness: P(correct | in) = 0.9 and P(correct | out) = 0.4 for every example (mem 0.5). The
  95% interval over models covers 0.5 for about 95% of the examples, and is about half as wide with four
  times the models (a bootstrap that ignored its resamples would have width 0 and cover nothing)."""
  rng = np.random.default_rng(0)

  def run(k):
    masks = ground_truth.subset_masks(seed=k, num_models=k, num_examples=400, rate=0.7)
    correct = rng.random(masks.shape) < np.where(masks, 0.9, 0.4)
    est = ground_truth_stats.estimates(correct, masks, num_boot=500)
    return np.nanmean((est["mem_low"] <= 0.5) & (0.5 <= est["mem_high"])), np.nanmean(
      est["mem_high"] - est["mem_low"]
    )

  cover_small, width_small = run(50)
  cover_large, width_large = run(200)
  assert 0.85 < cover_small and 0.85 < cover_large, (cover_small, cover_large)
  assert 0.4 < width_large / width_small < 0.65, (width_small, width_large)


def test_trained_models_recover_the_flipped_labels(data_dir):
  """The models of a run with 30% of its labels flipped, trained on 70% subsets: the flipped examples are
  the memorized ones (fitted when held in, wrong when held out), so mem separates them from the clean ones
  (ROC AUC > 0.9) and is near 0 on the clean ones. With no noise it would be the same models on clean
  labels: the test fails if the estimate ignored membership (mem ~ 0 everywhere, AUC ~ 0.5)."""
  import configs.digits

  config = configs.digits.get_config("tiny")
  config.data_dir = data_dir
  # 431 examples, 129 of them flipped; an MLP wide and long enough to fit every flipped label it holds.
  config.update(dataset_fraction=0.3, label_noise=0.3, num_epochs=60, batch_size=32)
  config.model.width = 256
  config.optimizer.update(name="adam", learning_rate=3e-3, warmup_epochs=0.0)
  out = ground_truth.compute(
    config, None, num_models=16, models_per_step=16, num_boot=200, log=lambda s: None
  )
  scored, noisy = out["scored"], out["is_noisy"]
  assert scored.sum() == 431 and noisy[scored].sum() == 129
  auc = score_stats.roc_auc(out["mem"][scored], noisy[scored])
  assert auc > 0.9, auc
  # Measured: mem 0.96 on the flipped examples (fitted when in: p_in 0.999; p_out 0.04), 0.26 on the clean.
  assert np.nanmean(out["mem"][scored & noisy]) > 0.8 and np.nanmean(out["mem"][scored & ~noisy]) < 0.4
  assert np.nanmean(out["p_in"][scored & noisy]) > 0.95


def test_a_ground_truth_of_other_labels_is_refused():
  ground = {"mem": np.zeros(4), "scored": np.ones(4, bool), "train_label": np.array([0, 1, 2, 3])}
  scores = {"scored": np.ones(4, bool), "train_label": np.array([0, 1, 2, 0])}
  with pytest.raises(UserError, match="agree with the run's on 75.0%"):
    ground_truth_stats.check_aligned(ground, scores)
