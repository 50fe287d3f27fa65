"""The digits reproduction's aggregation (analysis/paper_results.py) on synthetic sweep logs: the runs sorted
by experiment, seeds pooled into a mean with its t-interval, the paired label-noise difference, figures."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from rlp_jax.analysis import paper_results
from tests.test_report import write_synthetic_run


def _run(root, name, *, lam=0.0, seed=0, width=32, **config):
  """A synthetic run (test_report's logs) whose config.json holds the reproduction's keys."""
  workdir = write_synthetic_run(os.path.join(root, name), lam=lam, width=width, seed=seed + 10 * width)
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    saved = json.load(f)
  saved["seed"] = seed
  saved["label_noise"] = config.get("label_noise", 0.0)
  saved["rlp"]["label_mode"] = config.get("label_mode", "fixed")
  with open(path, "w") as f:
    json.dump(saved, f)
  return workdir


def _final(workdir, key):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f][-1][key]


def test_mean_ci_by_hand():
  m, lo, hi = paper_results.mean_ci([1.0, 2.0, 3.0])
  half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # sd 1 over 3 values
  assert (m, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
  assert paper_results.mean_ci([0.5])[0] == 0.5 and math.isnan(paper_results.mean_ci([0.5])[1])


def test_runs_are_sorted_by_experiment_and_pooled_over_seeds(tmp_path):
  root = str(tmp_path / "sweep")
  lam_runs = {
    (lam, s): _run(root, f"lam={lam},seed={s}", lam=lam, seed=s) for lam in (0.0, 10.0) for s in (0, 1)
  }
  noise = {
    (lam, s): _run(root, f"noise,lam={lam},seed={s}", lam=lam, seed=s, label_noise=0.2)
    for lam in (0.0, 10.0)
    for s in (0, 1)
  }
  _run(root, "shuffled", label_mode="shuffled")
  _run(root, "width=8", width=8)

  kinds = paper_results.classify(root)
  names = {k: sorted(r.name for r in v) for k, v in kinds.items()}
  assert names["lambda"] == sorted(os.path.basename(w) for w in lam_runs.values())
  assert names["noise"] == sorted(os.path.basename(w) for w in noise.values())
  assert names["shuffled"] == ["shuffled"] and names["fig2"] == ["lam=0.0,seed=0"]
  assert names["width"] == ["lam=0.0,seed=0", "width=8"]  # λ = 0, seed 0, fixed labels, no noise

  path = paper_results.write(root, str(tmp_path / "out"), {"total": 12.0})
  with open(path) as f:
    md = f.read()
  # The λ = 0 row: the mean and t-interval of the two seeds' final random-label accuracy.
  rnd = [_final(lam_runs[(0.0, s)], "rlp/pre_logits/accuracy") for s in (0, 1)]
  m, lo, hi = paper_results.mean_ci(rnd)
  assert m == pytest.approx(np.mean(rnd)) and lo < m < hi
  assert f"| 0 | 2 | {m:.4f} [{lo:.4f}, {hi:.4f}] |" in md
  # The paired label-noise difference, seed by seed.
  diffs = [
    _final(noise[(10.0, s)], "test/accuracy") - _final(noise[(0.0, s)], "test/accuracy") for s in (0, 1)
  ]
  assert f"(per seed: {diffs[0]:+.3f}, {diffs[1]:+.3f})" in md
  for name in ("fig2.png", "lambda.png", "controls.png"):
    assert os.path.getsize(tmp_path / "out" / name) > 5000, name
  assert "| total | 12 |" in md
