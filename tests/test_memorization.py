"""analysis/scores.py and analysis/memorization.py: per-example scores on a real tiny run.

Scores by hand, alignment to the dataset index, and the fixed and shuffled random labels of a trained run.
(Their statistics: test_score_stats.py; external files: test_external_scores.py; grids: test_image_grid.py.)
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from rlp_jax.analysis import image_grid, memorization, scores
from rlp_jax.data import input_pipeline, labels

# ---------------------------------------------------------------------------------------------------
# Scores by hand
# ---------------------------------------------------------------------------------------------------


def test_scores_from_logits_by_hand():
  logits = np.array([[[2.0, 0.0, 1.0], [0.0, 3.0, 3.0]]])  # one example, two heads, n = 3
  out = scores.scores_from_logits(logits, np.array([[0, 2]]))
  np.testing.assert_allclose(
    out["p_own"][0], [np.e**2 / (np.e**2 + 1 + np.e), np.e**3 / (1 + 2 * np.e**3)], 1e-6
  )
  np.testing.assert_allclose(out["margin"][0], [1.0, 0.0])
  np.testing.assert_array_equal(out["correct"][0], [True, False])  # a tie goes to the first max
  assert scores.scores_from_logits(np.array([[[1e4, 0.0]]]), np.array([[0]]))["p_own"][0, 0] == 1.0


def test_class_scores_by_hand():
  # Logits (2, 0, 1), trained-on label 0: loss = log(e^2 + 1 + e) - 2, margin 2 - 1; label 1: margin 0 - 2.
  out = scores.class_scores(np.array([[2.0, 0.0, 1.0], [2.0, 0.0, 1.0]]), np.array([0, 1]))
  lse = np.log(np.e**2 + 1 + np.e)
  np.testing.assert_allclose(out["class_loss"], [lse - 2, lse], rtol=1e-6)
  np.testing.assert_allclose(out["class_margin"], [1.0, -2.0])
  # Finite where the probability underflows to 0 (a loss read off p would be inf).
  assert scores.class_scores(np.array([[0.0, 1e4]]), np.array([0]))["class_loss"][0] == pytest.approx(1e4)


# ---------------------------------------------------------------------------------------------------
# Alignment to the dataset index, through the real input pipeline
# ---------------------------------------------------------------------------------------------------


def _dataset_labels(config):
  builder = tfds.builder(config.dataset, data_dir=config.data_dir)
  ds = tfds.as_numpy(builder.as_dataset(split="train"))
  out = {int(ex["index"]): int(ex["label"]) for ex in ds}
  return np.array([out[i] for i in range(len(out))])


@pytest.mark.parametrize("variant", ["plain", "noise_and_fraction"])
def test_a_planted_memorizable_example_ranks_first_at_its_own_index(tiny_config, variant):
  """Scores travel with their example: the pipeline reads examples out of index order, and the one example
  whose own random label gets a large logit must come out at its own row, ranked first."""
  config = tiny_config
  config.rlp.num_heads = 2
  if variant == "noise_and_fraction":
    config.label_noise, config.dataset_fraction = 0.3, 0.5
  info = input_pipeline.get_info(config)
  planted = (
    1000 if variant == "plain" else int(np.flatnonzero(labels.fraction_mask(config.seed, 1437, 0.5))[-3])
  )
  order = []

  def logits_fn(batch):
    idx = batch["index"]
    order.extend(idx[batch["mask"]].tolist())
    logits = np.random.default_rng(idx[:, None] * 7 + np.arange(2)).normal(size=(len(idx), 2, 10))
    own = batch["rlp_labels"]
    rows = np.flatnonzero(idx == planted)
    logits[rows, :, :] = 0.0
    logits[rows[:, None], np.arange(2), own[rows]] = 20.0  # this example's own labels, on both heads
    return {"pre_logits": logits}

  batches = input_pipeline.eval_batches(config, info, "train_eval", limit=-1)
  data = scores.collect(((b, logits_fn(b)) for b in batches), info.num_train)
  assert order != sorted(order)  # the pipeline really did read out of index order

  # As compute() stores it: one checkpoint, one layer.
  stored = {**data, "layers": np.array(["pre_logits"]), "steps": np.array([0])}
  stored.update({k: v[None] for k, v in data.items() if "/" in k})
  values = scores.score(stored, "p_own")
  assert np.nanargmax(values) == planted and values[planted] > 0.99
  assert np.nanargmax(scores.score(stored, "margin")) == planted
  np.testing.assert_array_equal(data["index"], np.arange(1437))

  m = info.num_train
  scored = data["scored"]
  expected_scored = np.ones(m, bool) if variant == "plain" else labels.fraction_mask(config.seed, m, 0.5)
  np.testing.assert_array_equal(scored, expected_scored)
  assert np.isnan(values[~scored]).all() and np.isfinite(values[scored]).all()
  clean = _dataset_labels(config)
  np.testing.assert_array_equal(data["label"][scored], clean[scored])
  noisy, is_noisy = labels.noisy_labels(
    config.seed, np.arange(m), clean, 10, config.label_noise, num_examples=m, fraction=config.dataset_fraction
  )
  np.testing.assert_array_equal(data["train_label"][scored], noisy[scored])
  np.testing.assert_array_equal(data["is_noisy"][scored], is_noisy[scored])
  assert data["is_noisy"].any() == (variant != "plain")
  np.testing.assert_array_equal(
    data["rlp_labels"][scored], labels.random_labels(config.seed, np.arange(m), 10, 2)[scored]
  )


# ---------------------------------------------------------------------------------------------------
# External scores and the image grid
# ---------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------
# A real tiny run
# ---------------------------------------------------------------------------------------------------


def test_scores_of_a_trained_run_match_its_logged_random_label_accuracy(analysis_run):
  config, workdir = analysis_run
  data = scores.compute(workdir, steps=[66, 132], log=lambda s: None)
  loaded = scores.load(os.path.join(workdir, scores.SCORE_FILE))
  assert sorted(loaded) == sorted(data)
  m = 1437
  assert list(loaded["steps"]) == [66, 132] and list(loaded["epochs"]) == [3.0, 6.0]
  assert list(loaded["layers"]) == ["block_1", "pre_logits"] and int(loaded["num_labels"]) == 200
  assert loaded["p_own/pre_logits"].shape == (2, m, 2) and loaded["correct/block_1"].dtype == bool
  assert loaded["scored"].all() and not loaded["is_noisy"].any()
  fixed = labels.random_labels(config.seed, np.arange(m), 200, 2)
  np.testing.assert_array_equal(loaded["rlp_labels"], [fixed, fixed])  # fixed mode: the same at every step

  # The per-example file reproduces the logged metric: mean of `correct` = online random-label accuracy.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = {r["step"]: r for r in map(json.loads, f)}
  for c, step in enumerate((66, 132)):
    for layer in ("block_1", "pre_logits"):
      for h in range(2):
        acc = loaded[f"correct/{layer}"][c, :, h].mean()
        assert acc == pytest.approx(logged[step][f"rlp/{layer}/head_{h}/accuracy"], abs=1e-9)
  assert (loaded["margin/pre_logits"] > 0).mean() == pytest.approx(
    loaded["correct/pre_logits"].mean(), abs=1e-3
  )

  images = image_grid.load_train_images(config)
  assert images.shape == (m, 8, 8, 1)
  out = memorization.analyze(workdir, loaded, k=4, images=images, num_boot=200)
  cap = out["capacity"]["pre_logits"]
  acc = np.mean([logged[132][f"rlp/pre_logits/head_{h}/accuracy"] for h in range(2)])
  assert cap["accuracy"] == pytest.approx(acc) and cap["num_heads"] == 2
  assert (
    cap["estimate"] == pytest.approx((acc - 0.005) / 0.995)
    and cap["ci_low"] < cap["estimate"] < cap["ci_high"]
  )
  assert os.path.getsize(out["image_grid"]) > 1000
  with open(os.path.join(workdir, "memorization.json")) as f:
    assert json.load(f)["capacity"]["pre_logits"]["estimate"] == cap["estimate"]


def test_shuffled_labels_score_each_checkpoint_against_the_labels_its_heads_last_trained_on(analysis_run):
  """With label_mode='shuffled' the labels change every epoch (docs/design.md §2): a checkpoint is scored
  against the epoch its heads last trained on, not epoch 0 and not the next one."""
  config, workdir = analysis_run
  # The checkpoints do not depend on the label mode (same heads, same shapes): scoring the shared run
  # under a shuffled config exercises compute's choice of epoch without training another run.
  shuffled = copy.deepcopy(config)
  shuffled.rlp.label_mode = "shuffled"
  data = scores.compute(
    workdir, "all", config=shuffled, output="memorization_shuffled.npz", log=lambda s: None
  )
  m, spe = 1437, 22  # digits: 1437 training examples; 22 steps of 64 per epoch
  assert list(data["steps"]) == [0, 66, 132]

  def draw(epoch):
    return labels.random_labels(config.seed, np.arange(m), 200, 2, mode="shuffled", epoch=epoch)

  # Step 0 is the initialization (epoch 0's labels); step 66 is the last update of the third epoch
  # (epoch index 2: steps 45..66), step 132 the last of the sixth (index 5).
  for c, step in enumerate(data["steps"]):
    epoch = 0 if step == 0 else (step - 1) // spe
    np.testing.assert_array_equal(data["rlp_labels"][c], draw(epoch))
  assert data["rlp_labels"].shape == (3, m, 2)
  assert (data["rlp_labels"][1] != draw(0)).mean() > 0.9  # new labels, not epoch 0's
  assert (data["rlp_labels"][1] != draw(3)).mean() > 0.9  # nor the epoch after the checkpoint
  # The scores are against those labels: heads trained on the fixed labels fit them above chance, and are
  # at chance (1/200; sd ~0.0013 over 2 x 1437 draws) on labels drawn afresh.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = {r["step"]: r for r in map(json.loads, f)}
  fixed_acc = np.mean([logged[132][f"rlp/pre_logits/head_{h}/accuracy"] for h in range(2)])
  chance = 1 / 200
  assert fixed_acc > 3 * chance  # else the comparison below could not tell the two label sets apart
  assert data["correct/pre_logits"][2].mean() < (chance + fixed_acc) / 2


def test_the_class_loss_separates_noisy_labels_where_the_rlp_scores_do_not(analysis_run):
  """The baseline per-example score (docs/results.md). The shared run trained on clean labels; scored
  under label_noise=0.3, exactly 431 of its 1437 examples carry a label it never saw: a planted case where
  the classifier's loss on the trained-on label must separate them (AUC near 1), while the RLP heads'
  scores, which know nothing of class labels, must not (AUC 0.5; its sd here is ~0.017)."""
  config, workdir = analysis_run
  noisy = copy.deepcopy(config)
  noisy.label_noise = 0.3
  data = scores.compute(
    workdir, [132], config=noisy, offline=True, output="memorization_noisy.npz", log=lambda s: None
  )
  m = 1437
  assert data["is_noisy"].sum() == 431 and data["class_loss"].shape == (1, m)
  loss, margin = data["class_loss"][0], data["class_margin"][0]
  assert np.isfinite(loss).all() and (loss >= 0).all()
  assert (loss[margin < 0] > np.log(2)).all()  # own label not the argmax: its probability is below 1/2
  assert data["offline_p_own/pre_logits"].shape == (1, m, 2) and data["offline_correct/block_1"].dtype == bool

  out = memorization.analyze(workdir, data, k=0, num_boot=200)
  rows = {(r["score"], r["layer"], r["heads"]): r for r in out["noisy_vs_clean"]}
  base = rows[("class_loss", None, "")]
  assert base["auc"] > 0.9 and base["ci_low"] <= base["auc"] <= base["ci_high"]
  assert out["noisy_vs_clean_best"]["score"] == "class_loss"
  for key in (
    ("p_own", "pre_logits", "mean of 2"),
    ("p_own", "pre_logits", "head 0"),
    ("offline_p_own", "pre_logits", "mean of 2"),
  ):
    assert abs(rows[key]["auc"] - 0.5) < 0.1, (key, rows[key])
  with open(os.path.join(workdir, "memorization.json")) as f:
    assert json.load(f)["noisy_vs_clean_best"]["auc"] == base["auc"]
