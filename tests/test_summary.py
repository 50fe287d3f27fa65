"""The end-of-run table and its explanation (training/summary.py), from metric dicts: both init controls,
and a verdict that does not credit the network with what a scale-free head finds at initialization."""

from __future__ import annotations

import numpy as np

from rlp_jax.training import summary

# The digits demo, seed 0 (configs/digits.py): online, offline @ init, offline @ init scale-free.
METRICS = {
  "epoch": 30,
  "train/accuracy": 1.0,
  "test/accuracy": 0.9833,
  "rlp/block_1/accuracy": 0.0181,
  "rlp/pre_logits/accuracy": 0.1294,
}
PLAIN = {"block_1": np.array([0.0174]), "pre_logits": np.array([0.0216])}
SCALE_FREE = {"block_1": np.array([0.0953]), "pre_logits": np.array([0.3890])}
LAYERS = ("block_1", "pre_logits")


def _result(controls):
  return {"rlp_heads": summary.rows(METRICS, controls, 200, LAYERS), "collapse": None}


def test_the_table_shows_both_controls():
  rows = summary.rows(
    METRICS, {"offline_at_init": PLAIN, "offline_at_init_scale_free": SCALE_FREE}, 200, LAYERS
  )
  assert [(r["offline_at_init_accuracy"], r["offline_at_init_scale_free_accuracy"]) for r in rows] == [
    (0.0174, 0.0953),
    (0.0216, 0.3890),
  ]
  table = summary.format_table(METRICS, rows).splitlines()
  assert table[1].split()[-5:] == ["init", "offline", "@", "init,", "scale-free"]
  assert table[3].split() == ["pre_logits/head_0", "0.1294", "0.0050", "0.0216", "0.3890"]


def test_without_the_scale_free_control_its_column_is_left_out():
  rows = summary.rows(METRICS, {"offline_at_init": PLAIN}, 200, LAYERS)
  assert all(r["offline_at_init_scale_free_accuracy"] is None for r in rows)
  assert "scale-free" not in summary.format_table(METRICS, rows)
  verdict = summary.explain("/w", _result({"offline_at_init": PLAIN})).splitlines()
  assert any(
    "6.0x the control: the trained features carry example-specific information" in v for v in verdict
  )


def test_the_verdict_says_when_a_scale_free_head_fits_the_initial_features_as_well():
  text = summary.explain("/w", _result({"offline_at_init": PLAIN, "offline_at_init_scale_free": SCALE_FREE}))
  assert "but a scale-free head fits the initial features to 0.3890 (3.0x pre_logits/head_0)" in text
  assert "the trained features carry example-specific information" not in text
  # A scale-free control well below the online head leaves the plain verdict standing.
  low = {k: v / 10 for k, v in SCALE_FREE.items()}
  text = summary.explain("/w", _result({"offline_at_init": PLAIN, "offline_at_init_scale_free": low}))
  assert "the trained features carry example-specific information" in text and "but a" not in text
