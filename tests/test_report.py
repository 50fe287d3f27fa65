"""Figures from run logs: every figure is written, non-empty, and draws exactly what the logs hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import configs.digits
from rlp_jax.analysis import figures, report, run_logs
from rlp_jax.infra.errors import UserError

LAYERS = ("block_1", "block_2", "block_10", "pre_logits")  # block_10 after block_2: model order, not text
PNG = b"\x89PNG\r\n\x1a\n"


def write_synthetic_run(workdir, lam=0.0, width=16, epochs=6, offline=True, seed=0):
  """A run's logs as train.py / offline.py write them, with made-up but plausible numbers."""
  os.makedirs(workdir, exist_ok=True)
  rng = np.random.default_rng(seed)
  config = configs.digits.get_config("tiny")
  config.rlp.reg_lambda, config.model.width, config.data_dir = lam, width, f"/tmp/somewhere{seed}"
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json())
  damp = 1.0 / (1.0 + np.log10(1.0 + lam))
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for e in range(1, epochs + 1):
      rec = {
        "step": 22 * e,
        "epoch": float(e),
        "train/accuracy": 1 - 0.5 * np.exp(-e / 3) + rng.normal() * 0.01,
      }
      rec["test/accuracy"] = rec["train/accuracy"] - 0.05 * damp
      for i, layer in enumerate(LAYERS):
        rec[f"rlp/{layer}/accuracy"] = (
          0.1 + (i + 1) * 0.05 * (1 - np.exp(-e / 4)) * damp + rng.normal() * 0.005
        )
        rec[f"rlp/{layer}/chance"] = 0.1
        rec[f"probe/{layer}/train_accuracy"] = 0.5 + 0.1 * i + 0.02 * e
        rec[f"probe/{layer}/test_accuracy"] = 0.45 + 0.1 * i + 0.015 * e
      f.write(json.dumps(rec) + "\n")
  if offline:
    with open(os.path.join(workdir, "offline.jsonl"), "w") as f:
      for e in (0, 2, 4, 6):
        rec = {"step": 22 * e, "epoch": float(e)}
        for layer in ("block_1", "pre_logits"):
          rec[f"offline/{layer}/accuracy"] = 0.12 + 0.01 * e
          rec[f"offline/{layer}/chance"] = 0.1
        f.write(json.dumps(rec) + "\n")
  return workdir


def _records(workdir, name="metrics.jsonl"):
  with open(os.path.join(workdir, name)) as f:
    return [json.loads(line) for line in f]


def _is_png(path):
  with open(path, "rb") as f:
    return f.read(8) == PNG and os.path.getsize(path) > 5000


def _lines(ax):
  return {
    line.get_label(): (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
    for line in ax.lines
  }


def test_single_run_report_writes_every_figure_and_plots_the_log(tmp_path):
  run = write_synthetic_run(str(tmp_path / "run"))
  drawn = report.make_report([run])
  out = os.path.join(run, "report")
  names = sorted(os.path.basename(p) for p in drawn)
  assert names == ["accuracy.png", "layer_map.png", "layers.png", "online_offline.png", "probes.png"]
  assert all(_is_png(p) for p in drawn)
  with open(os.path.join(out, "report.md")) as f:
    md = f.read()
  assert all(f"]({n})" in md for n in names) and "| run |" in md

  recs, off = _records(run), _records(run, "offline.jsonl")
  epochs = [r["epoch"] for r in recs]
  data = drawn[os.path.join(out, "accuracy.png")]
  np.testing.assert_array_equal(data["train"][0], epochs)
  np.testing.assert_array_equal(data["test"][1], [r["test/accuracy"] for r in recs])
  np.testing.assert_array_equal(
    data["random labels (pre_logits)"][1], [r["rlp/pre_logits/accuracy"] for r in recs]
  )

  data = drawn[os.path.join(out, "online_offline.png")]
  np.testing.assert_array_equal(data["offline (block_1)"][0], [0, 2, 4, 6])  # epoch 0 = initialization
  np.testing.assert_array_equal(
    data["offline (pre_logits)"][1], [r["offline/pre_logits/accuracy"] for r in off]
  )
  np.testing.assert_array_equal(data["online (pre_logits)"][1], [r["rlp/pre_logits/accuracy"] for r in recs])

  data = drawn[os.path.join(out, "layer_map.png")]
  assert data["layers"] == list(LAYERS)
  expected = np.array([[r[f"rlp/{lay}/accuracy"] for r in recs] for lay in LAYERS])
  np.testing.assert_array_equal(data["accuracy"], expected)

  data = drawn[os.path.join(out, "probes.png")]
  np.testing.assert_array_equal(data["test block_10"][1], [r["probe/block_10/test_accuracy"] for r in recs])


def test_plotted_lines_are_the_logged_values_with_labels_and_chance(tmp_path):
  """Read back from matplotlib's own Line2D objects, not from what the function says it drew."""
  logs = run_logs.RunLogs.load(write_synthetic_run(str(tmp_path / "run")))
  recs = logs.metrics
  fig, ax = figures.new_figure()
  figures.plot_accuracy(ax, logs)
  lines = _lines(ax)
  np.testing.assert_array_equal(lines["train"][1], [r["train/accuracy"] for r in recs])
  np.testing.assert_array_equal(lines["random labels (pre_logits)"][0], [r["epoch"] for r in recs])
  (chance,) = [v for k, v in lines.items() if k.startswith("chance 1/n")]
  np.testing.assert_array_equal(chance[1], [0.1, 0.1])
  assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "accuracy" and ax.get_legend() is not None

  fig, ax = figures.new_figure()
  figures.plot_layers(ax, logs)
  lines = _lines(ax)
  assert [k for k in lines if not k.startswith("chance")] == list(LAYERS)
  for layer in LAYERS:
    np.testing.assert_array_equal(lines[layer][1], [r[f"rlp/{layer}/accuracy"] for r in recs])
  fig, ax = figures.new_figure()
  figures.plot_layer_map(ax, logs)
  np.testing.assert_array_equal(
    ax.images[0].get_array(), [[r[f"rlp/{lay}/accuracy"] for r in recs] for lay in LAYERS]
  )
  assert [t.get_text() for t in ax.get_yticklabels()] == list(LAYERS)


def test_lambda_sweep_panels_put_lambda_zero_left_of_the_log_axis(tmp_path):
  lams = (100.0, 0.0, 1.0, 0.01)
  runs = [
    write_synthetic_run(str(tmp_path / f"rlp.reg_lambda={lam:g}"), lam, seed=i) for i, lam in enumerate(lams)
  ]
  drawn = report.make_report([str(tmp_path)], out=str(tmp_path / "rep"))  # a sweep root: its runs are found
  names = {os.path.basename(p) for p in drawn}
  assert {"lambda.png", "lambda_curves.png", "per_layer.png"} <= names
  assert "rlp.reg_lambda=0__accuracy.png" in names
  assert all(_is_png(p) for p in drawn)

  final = {lam: _records(run)[-1] for lam, run in zip(lams, runs)}
  data = drawn[str(tmp_path / "rep" / "lambda.png")]
  for key in ("rlp/pre_logits/accuracy", "train/accuracy", "test/accuracy"):
    x, y = data[key]
    np.testing.assert_array_equal(x, [0.0, 0.01, 1.0, 100.0])
    np.testing.assert_array_equal(y, [final[lam][key] for lam in x])

  logs = run_logs.find_runs([str(tmp_path)])
  assert run_logs.differing_keys(logs) == [
    "rlp.reg_lambda"
  ]  # data_dir differs too, but is not an experiment key
  fig, axes = figures.new_figure(3)
  figures.plot_lambda(axes, logs)
  lines = _lines(axes[2])
  np.testing.assert_array_equal(lines["_child0"][0], [-2.0, 0.0, 2.0])  # log10 λ for λ > 0
  np.testing.assert_array_equal(lines["_child1"][0], [-3.0])  # λ = 0: one decade left of 1e-2
  np.testing.assert_array_equal(lines["_child1"][1], [final[0.0]["test/accuracy"]])
  assert [t.get_text() for t in axes[2].get_xticklabels()][0] == "0"
  assert "λ" in axes[2].get_xlabel() and axes[2].get_ylabel() == "test accuracy"

  data = drawn[str(tmp_path / "rep" / "per_layer.png")]
  layers, y = data["rlp/accuracy λ=0.01"]
  assert layers == list(LAYERS)
  np.testing.assert_array_equal(y, [final[0.01][f"rlp/{lay}/accuracy"] for lay in LAYERS])
  with open(tmp_path / "rep" / "report.md") as f:
    md = f.read()
  assert "| run | λ |" in md and "![Figs. 4/5: final accuracies vs λ](lambda.png)" in md


def test_runs_differing_in_two_keys_give_one_lambda_line_per_other_setting(tmp_path):
  for lam in (0.0, 1.0):
    for width in (8, 16):
      write_synthetic_run(str(tmp_path / f"l{lam}_w{width}"), lam, width, epochs=2, offline=False)
  logs = run_logs.find_runs([str(tmp_path)])
  assert run_logs.differing_keys(logs) == ["rlp.reg_lambda", "model.width"]
  fig, axes = figures.new_figure(3)
  data = figures.plot_lambda(axes, logs)
  assert sorted(data) == sorted(
    f"{k} model.width={w}"
    for k in ("rlp/pre_logits/accuracy", "train/accuracy", "test/accuracy")
    for w in (8, 16)
  )
  assert {k for k in _lines(axes[0]) if not k.startswith("_")} >= {"model.width=8", "model.width=16"}


def test_report_shows_the_memorization_summary(tmp_path):
  """memorization.json (analysis/memorization.analyze) -> the capacity table, the AUC and external
  correlation lines, and the image grid linked relative to the report."""
  run = write_synthetic_run(str(tmp_path / "run"), epochs=2, offline=False)
  rng = np.random.default_rng(7)
  grid = os.path.join(run, "memorization_grid_pre_logits.png")
  with open(grid, "wb") as f:
    f.write(PNG)
  capacity = {}
  for layer in ("block_1", "pre_logits"):
    est = rng.uniform(0.1, 0.9)
    capacity[layer] = {
      "estimate": est,
      "ci_low": est - rng.uniform(0.01, 0.05),
      "ci_high": est + rng.uniform(0.01, 0.05),
      "level": 0.9,
      "accuracy": rng.uniform(0.1, 1.0),
      "chance": 0.1,
      "num_heads": int(rng.integers(2, 9)),
    }
  auc, rho = rng.uniform(0.5, 1.0), rng.uniform(-1.0, 1.0)
  mem = {
    "score": "margin",
    "layer": "pre_logits",
    "step": 44,
    "capacity": capacity,
    "noisy_vs_clean_auc": auc,
    "external": {"spearman": rho, "num_examples": 1234, "label_agreement": 1.0},
    "image_grid": grid,
  }
  with open(os.path.join(run, "memorization.json"), "w") as f:
    json.dump(mem, f)
  report.make_report([run], out=str(tmp_path / "rep"))
  with open(tmp_path / "rep" / "report.md") as f:
    md = f.read()
  assert "Per-example score `margin` on `pre_logits` at step 44." in md
  assert "| 90% CI |" in md  # the level the interval was computed at
  for layer, c in capacity.items():
    row = (
      f"| {layer} | {c['estimate']:.4f} | [{c['ci_low']:.4f}, {c['ci_high']:.4f}] | {c['accuracy']:.4f} | "
      f"0.1000 | {c['num_heads']} |"
    )
    assert row in md.splitlines()
  assert f"ROC AUC of the score for noisy vs clean labels: {auc:.4f}" in md
  assert f"Spearman correlation with the external score: {rho:.4f} (1234 examples)" in md
  assert "](../run/memorization_grid_pre_logits.png)" in md  # from rep/ to the run's own file

  # A grid path relative to the run resolves against it; a grid that is gone is not linked.
  mem["image_grid"] = "memorization_grid_pre_logits.png"
  with open(os.path.join(run, "memorization.json"), "w") as f:
    json.dump(mem, f)
  report.make_report([run])  # out = run/report
  with open(os.path.join(run, "report", "report.md")) as f:
    assert "](../memorization_grid_pre_logits.png)" in f.read()
  os.remove(grid)
  report.make_report([run])
  with open(os.path.join(run, "report", "report.md")) as f:
    md = f.read()
  assert "memorization_grid" not in md and f"{auc:.4f}" in md


@pytest.fixture(scope="module")
def real_run(analysis_run):
  return analysis_run[1]


def test_report_of_a_real_tiny_run_from_the_command_line(real_run, tmp_path):
  out = str(tmp_path / "rep")
  proc = subprocess.run(
    [sys.executable, "-m", "rlp_jax.report", real_run, f"--out={out}"],
    capture_output=True,
    text=True,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  for name in ("accuracy.png", "layers.png", "layer_map.png", "probes.png", "report.md"):
    assert os.path.getsize(os.path.join(out, name)) > 300, name
  assert _is_png(os.path.join(out, "accuracy.png"))
  logs = run_logs.RunLogs.load(real_run)
  fig, ax = figures.new_figure()
  data = figures.plot_accuracy(ax, logs)
  recs = _records(real_run)
  assert len(recs) == 6
  np.testing.assert_array_equal(data["test"][1], [r["test/accuracy"] for r in recs])
  np.testing.assert_array_equal(
    data["random labels (pre_logits)"][1], [r["rlp/pre_logits/accuracy"] for r in recs]
  )


def test_bad_paths_are_named(tmp_path):
  with pytest.raises(UserError, match="metrics.jsonl"):
    report.make_report([str(tmp_path)])
