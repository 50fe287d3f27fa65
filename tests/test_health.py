"""Collapse under a strong regularizer is detected and said (training/health.py): on metric dicts (the
digits numbers measured with λ = 1000 and the demo's), then once in a tiny real run with a huge λ."""

from __future__ import annotations

import json
import math
import os

import pytest
from conftest import make_tiny_config

from rlp_jax.infra import rundir
from rlp_jax.training import health, loop, summary

DIGITS = dict(num_classes=10, warmup_epochs=1.0)


def _metrics(epoch, train_acc, l_class, l_reg):
  return {"epoch": epoch, "train/accuracy": train_acc, "loss/class": l_class, "loss/reg": l_reg}


# configs/digits.py with --config.rlp.reg_lambda=1000 (epochs 2 and 6): L_class stays at ln 10.
COLLAPSED = [_metrics(2, 0.1009, 2.3069, 0.00513), _metrics(6, 0.1079, 2.3018, 0.00532)]
# The demo (configs/digits.py, λ = 0) at epochs 2, 3, 5, 10 and 30: (train accuracy, L_class, L_reg).
DEMO = [
  _metrics(2, 0.3681, 1.9757, 0.00553),
  _metrics(3, 0.2470, 1.6311, 0.00546),
  _metrics(5, 0.7613, 1.1350, 0.0059),
  _metrics(10, 0.9221, 0.1775, 0.00777),
  _metrics(30, 1.0, 0.0017, 0.01983),
]


def test_fires_on_the_collapsed_digits_run():
  for m in COLLAPSED:
    warning = health.collapse(m, reg_lambda=1000.0, **DIGITS)
    assert warning and f"by epoch {m['epoch']}" in warning and "Lower config.rlp.reg_lambda" in warning
    assert "\n" not in warning


def test_silent_on_the_demo_numbers_even_at_a_huge_lambda():
  """The demo's class head leaves chance after its warm-up: no warning, whatever λ·L_reg is."""
  for lam in (0.0, 10.0, 1e6):
    assert all(health.collapse(m, reg_lambda=lam, **DIGITS) is None for m in DEMO), lam


@pytest.mark.parametrize(
  "metrics,reg_lambda,why",
  [
    (_metrics(1, 0.10, 2.30, 0.005), 1000.0, "still in the warm-up"),
    (COLLAPSED[1], 0.0, "no regularizer: another failure, not this one"),
    (COLLAPSED[1], 100.0, "λ·L_reg (0.53) below L_class (2.30): the regularizer is not what drives it"),
    (_metrics(6, 0.10, 1.2, 0.005), 1000.0, "L_class well below ln C: the class head is learning"),
    ({"epoch": 6, "train/accuracy": 0.1}, 1000.0, "losses not logged (a re-evaluated finished run)"),
  ],
)
def test_silent_where_it_is_not_this_collapse(metrics, reg_lambda, why):
  assert health.collapse(metrics, reg_lambda=reg_lambda, **DIGITS) is None, why


def test_thresholds_scale_with_the_number_of_classes():
  """ImageNet: chance is 0.001 and ln 1000 = 6.9; 0.0012 accuracy at L_class 6.9 is collapse, 0.01 is not."""
  imagenet = dict(num_classes=1000, warmup_epochs=8.0, reg_lambda=1e4)
  assert health.collapse(_metrics(10, 0.0012, math.log(1000), 0.001), **imagenet)
  assert health.collapse(_metrics(10, 0.01, math.log(1000), 0.001), **imagenet) is None
  assert health.collapse(_metrics(8, 0.0012, math.log(1000), 0.001), **imagenet) is None  # warm-up


def test_a_huge_lambda_collapses_a_tiny_run_and_the_run_says_so(data_dir, tmp_path, caplog):
  config = make_tiny_config(data_dir)
  config.rlp.reg_lambda = 1e4
  config.max_steps_per_epoch = 8
  config.eval.train_examples = 256
  config.offline.at_init = False
  config.rlp.layers, config.probes.layers = "pre_logits", ""  # less to compile
  workdir = str(tmp_path)
  with caplog.at_level("WARNING"):
    result = loop.train_and_evaluate(config, workdir)
  collapse = result["collapse"]
  assert collapse and collapse["epoch"] == 2 and collapse["at_end"], (result["metrics"], collapse)
  assert any(
    r.levelname == "WARNING" and "WARNING: training collapsed" in r.getMessage() for r in caplog.records
  )
  with open(os.path.join(workdir, rundir.SUMMARY_FILE)) as f:
    assert json.load(f)["collapse"] == collapse
  assert "WARNING: training collapsed" in summary.explain(workdir, result)
