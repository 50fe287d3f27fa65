"""Figures from run logs: every figure is written, non-empty, and draws exactly what the logs hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import configs.digits
from rlp_jax.analysis import figures, figures_across_runs, report, run_logs
from rlp_jax.infra.errors import UserError

LAYERS = ("block_1", "block_2", "block_10", "pre_logits")  # block_10 after block_2: model order, not text
PNG = b"\x89PNG\r\n\x1a\n"
RANDOM = "random labels, train (pre_logits head)"  # Fig. 2A's random-label line


def write_synthetic_run(
  workdir, lam=0.0, width=16, epochs=6, offline=True, seed=0, num_labels=10, rlp_layers=LAYERS
):
  """A run's logs as train.py / offline.py write them, with made-up but plausible numbers."""
  os.makedirs(workdir, exist_ok=True)
  rng = np.random.default_rng(seed)
  config = configs.digits.get_config("tiny")
  config.rlp.reg_lambda, config.model.width, config.data_dir = lam, width, f"/tmp/somewhere{seed}"
  config.rlp.num_labels, config.num_epochs = num_labels, epochs
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
        if layer in rlp_layers:
          rec[f"rlp/{layer}/accuracy"] = (
            1 / num_labels + (i + 1) * 0.05 * (1 - np.exp(-e / 4)) * damp + rng.normal() * 0.001
          )
          rec[f"rlp/{layer}/chance"] = 1 / num_labels
        rec[f"probe/{layer}/train_accuracy"] = 0.5 + 0.1 * i + 0.02 * e
        rec[f"probe/{layer}/test_accuracy"] = 0.45 + 0.1 * i + 0.015 * e
      f.write(json.dumps(rec) + "\n")
  if offline:
    with open(os.path.join(workdir, "offline.jsonl"), "w") as f:
      for e in (0, 2, 4, 6):
        rec = {"step": 22 * e, "epoch": float(e)}
        for layer in ("block_1", "pre_logits"):
          rec[f"offline/{layer}/accuracy"] = 0.12 + 0.01 * e
          rec[f"offline/{layer}/chance"] = 1 / num_labels
        f.write(json.dumps(rec) + "\n")
  return workdir


def _records(workdir, name="metrics.jsonl"):
  with open(os.path.join(workdir, name)) as f:
    return [json.loads(line) for line in f]


def _same_bytes(a, b):
  with open(a, "rb") as f, open(b, "rb") as g:
    return f.read() == g.read()


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
  np.testing.assert_array_equal(data["class labels, train"][0], epochs)
  np.testing.assert_array_equal(data["class labels, test"][1], [r["test/accuracy"] for r in recs])
  np.testing.assert_array_equal(data[RANDOM][1], [r["rlp/pre_logits/accuracy"] for r in recs])

  data = drawn[os.path.join(out, "online_offline.png")]
  np.testing.assert_array_equal(
    data["fresh head on the frozen network (block_1)"][0], [0, 2, 4, 6]
  )  # epoch 0 = initialization
  np.testing.assert_array_equal(
    data["fresh head on the frozen network (pre_logits)"][1], [r["offline/pre_logits/accuracy"] for r in off]
  )
  np.testing.assert_array_equal(
    data["head trained alongside (pre_logits)"][1], [r["rlp/pre_logits/accuracy"] for r in recs]
  )

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
  np.testing.assert_array_equal(lines["class labels, train"][1], [r["train/accuracy"] for r in recs])
  np.testing.assert_array_equal(lines[RANDOM][0], [r["epoch"] for r in recs])
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
  figures_across_runs.plot_lambda(axes, logs)
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
  data = figures_across_runs.plot_lambda(axes, logs)
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
    "noisy_vs_clean_best": {
      "score": "class_loss",
      "layer": None,
      "heads": "",
      "step": 22,
      "auc": 0.9312,
      "ci_low": 0.9,
      "ci_high": 0.95,
      "level": 0.95,
    },
    "external": {"spearman": rho, "num_examples": 1234, "label_agreement": 1.0},
    "image_grid": grid,
  }
  with open(os.path.join(run, "memorization.json"), "w") as f:
    json.dump(mem, f)
  report.make_report([run], out=str(tmp_path / "rep"))
  with open(tmp_path / "rep" / "report.md") as f:
    md = f.read()
  assert "Per-example score: margin of the own random label's logit" in md and "`pre_logits` heads" in md
  assert "| 90% CI |" in md  # the level the interval was computed at
  for layer, c in capacity.items():
    row = (
      f"| {layer} | {c['estimate']:.4f} | [{c['ci_low']:.4f}, {c['ci_high']:.4f}] | {c['accuracy']:.4f} | "
      f"0.1000 | {c['num_heads']} |"
    )
    assert row in md.splitlines()
  assert f"ROC AUC of the score for noisy vs clean labels: {auc:.4f}" in md
  assert (
    "Best noisy-vs-clean separation: the classifier's loss on the label it was trained on at step 22: "
    "ROC AUC 0.9312 [0.9000, 0.9500] (95% CI)"
  ) in md
  assert f"Spearman correlation with the external score: {rho:.4f} (1234 examples)" in md
  # Copied next to report.md and linked relatively: the report directory is self-contained.
  assert "](memorization_grid_pre_logits.png)" in md
  assert _same_bytes(grid, tmp_path / "rep" / "memorization_grid_pre_logits.png")

  # A grid path relative to the run resolves against it; a grid that is gone is not linked.
  mem["image_grid"] = "memorization_grid_pre_logits.png"
  with open(os.path.join(run, "memorization.json"), "w") as f:
    json.dump(mem, f)
  report.make_report([run])  # out = run/report
  with open(os.path.join(run, "report", "report.md")) as f:
    assert "](memorization_grid_pre_logits.png)" in f.read()
  os.remove(grid)
  report.make_report([run])
  with open(os.path.join(run, "report", "report.md")) as f:
    md = f.read()
  assert "](memorization_grid" not in md and f"{auc:.4f}" in md


@pytest.fixture(scope="module")
def real_run(analysis_run):
  return analysis_run[1]


def test_report_of_a_real_tiny_run_from_the_command_line(real_run, tmp_path):
  out = str(tmp_path / "rep")
  proc = subprocess.run(
    [sys.executable, "-m", "rlp_jax.report", f"--workdir={real_run}", f"--out={out}"],
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
  np.testing.assert_array_equal(data["class labels, test"][1], [r["test/accuracy"] for r in recs])
  np.testing.assert_array_equal(data[RANDOM][1], [r["rlp/pre_logits/accuracy"] for r in recs])


def test_bad_paths_are_named(tmp_path):
  with pytest.raises(UserError, match="metrics.jsonl"):
    report.make_report([str(tmp_path)])


# ----------------------------------------------------------------------------------------------------
# The command line: --workdir like every command; where the report goes
# ----------------------------------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _report_cli(*args):
  return subprocess.run(
    [sys.executable, "-m", "rlp_jax.report", *args], capture_output=True, text=True, cwd=REPO
  )


def test_cli_refuses_positional_paths_in_one_line_and_has_help(tmp_path):
  run = write_synthetic_run(str(tmp_path / "run"), epochs=2, offline=False)
  proc = _report_cli(run)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
    f"error: --workdir: paths are given as flags, not positional arguments: --workdir={run} "
    "(repeat --workdir for several runs)."
  ]
  assert not os.path.exists(os.path.join(run, "report"))
  proc = _report_cli()
  assert proc.returncode == 2 and proc.stderr.startswith("error: --workdir: required")
  proc = _report_cli("--help")
  assert (
    "--workdir" in proc.stdout and "--out" in proc.stdout and not proc.stderr
  )  # (absl exits 1 after --help)


def test_cli_several_workdirs_a_sweep_root_and_a_damaged_log(tmp_path):
  """Two runs of one sweep (siblings: the report goes to their parent), then the sweep root itself; a
  damaged line in the middle of one log is skipped with a warning, not taken as the end of the log."""
  root = tmp_path / "sweep"
  a = write_synthetic_run(str(root / "rlp.reg_lambda=0"), 0.0, epochs=4, offline=False)
  b = write_synthetic_run(str(root / "rlp.reg_lambda=1"), 1.0, epochs=4, offline=False, seed=1)
  with open(os.path.join(b, "metrics.jsonl")) as f:
    lines = f.readlines()
  lines[1] = lines[1][: len(lines[1]) // 2] + "\n"  # epoch 2's record, cut in half
  with open(os.path.join(b, "metrics.jsonl"), "w") as f:
    f.writelines(lines)

  proc = _report_cli(f"--workdir={a}", f"--workdir={b}", "--noper_run")
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = root / "report"
  assert sorted(os.listdir(out)) == ["lambda.png", "lambda_curves.png", "per_layer.png", "report.md"]
  warning = f"warning: {b}/metrics.jsonl:2: not a complete JSON record; skipped."
  assert proc.stderr.strip().splitlines() == [warning]
  with open(out / "report.md") as f:
    md = f.read()
  final_epochs = [row.split(" | ")[2] for row in md.splitlines() if row.startswith("| rlp.reg_lambda=")]
  assert final_epochs == ["4", "4"]  # the damaged run's last epoch is still found

  assert "1 line(s) could not be read" in md and "metrics.jsonl:2: not a complete JSON record" in md

  os.remove(out / "report.md")
  proc = _report_cli(f"--workdir={root}", "--noper_run")  # a sweep root: its runs are found
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(out / "report.md") as f:
    md = f.read()
  assert [row.split(" | ")[0] for row in md.splitlines() if row.startswith("| rlp.")] == [
    "| rlp.reg_lambda=0",
    "| rlp.reg_lambda=1",
  ]


def test_runs_in_different_trees_need_out_and_never_write_to_the_root(tmp_path):
  a = write_synthetic_run(str(tmp_path / "x" / "one" / "run"), epochs=2, offline=False)
  b = write_synthetic_run(str(tmp_path / "y" / "run"), 1.0, epochs=2, offline=False)
  with pytest.raises(UserError, match=r"^--out: the runs are in different directories .*give --out=DIR"):
    report.make_report([a, b])
  assert sorted(os.listdir(tmp_path)) == ["x", "y"]  # nothing written at the common parent
  proc = _report_cli(f"--workdir={a}", f"--workdir={b}")
  assert proc.returncode == 2 and proc.stderr.startswith("error: --out: the runs are in different")
  assert sorted(os.listdir(tmp_path)) == ["x", "y"]

  assert report.default_out([a]) == os.path.join(a, "report")
  assert report.default_out([a, str(tmp_path / "x" / "one" / "other")]) == str(
    tmp_path / "x" / "one" / "report"
  )
  for paths in (["/"], ["/run_a", "/run_b"], [a, "/elsewhere"]):
    with pytest.raises(UserError, match="--out"):
      report.default_out(paths)
  drawn = report.make_report([a, b], out=str(tmp_path / "both"), per_run=False)
  assert {os.path.dirname(p) for p in drawn} == {str(tmp_path / "both")}


def test_a_damaged_middle_line_is_skipped_with_a_warning_not_the_end_of_the_log(tmp_path):
  run = write_synthetic_run(str(tmp_path / "run"), epochs=5, offline=False)
  path = os.path.join(run, "metrics.jsonl")
  with open(path) as f:
    lines = f.readlines()
  lines[2] = '{"step": 66, "epoch": 3.0, "train/accura\n'
  with open(path, "w") as f:
    f.writelines(lines)
  with pytest.warns(UserWarning, match=r"metrics.jsonl:3: not a complete JSON record"):
    logs = run_logs.RunLogs.load(run)
  assert [r["epoch"] for r in logs.metrics] == [1.0, 2.0, 4.0, 5.0]
  assert logs.final["epoch"] == 5.0 and len(logs.skipped) == 1


# ----------------------------------------------------------------------------------------------------
# What every figure shows: a title, chance where it belongs, no line across a layer without a head
# ----------------------------------------------------------------------------------------------------


def _titles(fig):
  sup = fig.get_suptitle()
  return [sup] if sup else [ax.get_title() for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_every_figure_is_titled_with_the_setting_not_the_directory(tmp_path):
  runs = [
    write_synthetic_run(str(tmp_path / f"dir_{i}"), lam, seed=i, num_labels=200)
    for i, lam in enumerate((0, 1))
  ]
  logs = run_logs.find_runs(runs)
  specs = report.across_runs(logs) + [s for r in logs for s in report.run_figures(r)]
  assert len(specs) == 3 + 2 * 5
  for spec in specs:
    fig, _ = spec.render()
    titles = _titles(fig)
    assert titles and all(titles), spec.filename
    assert all("dir_" not in t and str(tmp_path) not in t for t in titles), titles
    assert all("digits, mlp" in t for t in titles), titles  # the setting the runs share
    assert spec.explanation and spec.heading
    figures._plt().close(fig)
  fig, ax = figures.new_figure()
  figures.plot_accuracy(ax, logs[1])
  assert ax.get_title().endswith("digits, mlp, λ=1, n=200")


def _chance(ax, prefix="chance 1/n"):
  (line,) = [line for line in ax.lines if line.get_label().startswith(prefix)]
  return float(np.unique(line.get_ydata())[0])


@pytest.mark.parametrize("num_labels, log", [(200, True), (10, False)])
def test_random_label_axes_show_chance_visibly(tmp_path, num_labels, log):
  """Chance 1/n on every random-label axis, inside the visible range; a log axis when 1/n is small."""
  logs = [
    run_logs.RunLogs.load(write_synthetic_run(str(tmp_path / f"l{lam}"), lam, seed=i, num_labels=num_labels))
    for i, lam in enumerate((0.0, 1.0))
  ]
  axes_of = []
  for plot in (figures.plot_accuracy, figures.plot_layers, figures.plot_online_offline):
    fig, ax = figures.new_figure()
    plot(ax, logs[0])
    axes_of.append(ax)
  across = figures_across_runs
  for plot in (across.plot_lambda, across.plot_lambda_curves, across.plot_per_layer):
    fig, axes = figures.new_figure(3)
    plot(axes, logs)
    axes_of.append(axes[0])
  for ax in axes_of:
    assert _chance(ax) == pytest.approx(1 / num_labels)
    lo, hi = ax.get_ylim()
    assert lo < 1 / num_labels < hi
    assert (ax.get_yscale() == "log") == log
    if log:  # the chance line is not squeezed against the axis' bottom edge
      assert lo <= 1 / num_labels / 1.5
  fig, axes = figures.new_figure(2)
  figures.plot_probes(axes, logs[0])
  assert [_chance(ax, "chance 1/classes") for ax in axes] == [0.1, 0.1]  # digits: 10 classes
  figures._plt().close("all")


def test_per_layer_profile_has_a_gap_where_a_run_has_no_head(tmp_path):
  rlp_layers = ("block_1", "block_10", "pre_logits")  # no head on block_2 (probes on every layer)
  runs = [
    write_synthetic_run(str(tmp_path / f"l{lam}"), lam, seed=i, rlp_layers=rlp_layers, offline=False)
    for i, lam in enumerate((0.0, 1.0))
  ]
  logs = run_logs.find_runs(runs)
  fig, axes = figures.new_figure(3)
  data = figures_across_runs.plot_per_layer(axes, logs)
  assert [t.get_text() for t in axes[0].get_xticklabels()] == list(LAYERS)
  for line in axes[0].lines:
    if line.get_label().startswith("λ="):
      y = np.asarray(line.get_ydata(), float)
      assert np.isnan(y[1]) and np.isfinite(y[[0, 2, 3]]).all()  # matplotlib draws no segment across NaN
  assert data["rlp/accuracy λ=0"][0] == list(rlp_layers)
  assert all(np.isfinite(np.asarray(line.get_ydata(), float)).all() for line in axes[1].lines[:2])
  figures._plt().close("all")


def test_the_controls_stand_beside_the_online_heads_in_the_table_and_on_fig_2b(tmp_path):
  # A run as the demo leaves it: no offline.jsonl, the end-of-run controls in summary.json.
  run = write_synthetic_run(str(tmp_path / "run"), offline=False)
  accuracies = {"offline_at_init": 0.02, "probe_at_init": 0.42, "probe_trained": 0.18}
  heads = [{"layer": "pre_logits", "head": 0, **{f"{k}_accuracy": v for k, v in accuracies.items()}}]
  with open(os.path.join(run, "summary.json"), "w") as f:
    json.dump({"final_metrics": {}, "rlp_heads": heads}, f)
  drawn = report.make_report([run])
  md = open(os.path.join(run, "report", "report.md")).read()
  assert "control @ init pre_logits | probe @ init pre_logits | probe trained pre_logits" in md
  assert "| 0.0200 | 0.4200 | 0.1800 |" in md and "blind to their scale" in md
  data = drawn[os.path.join(run, "report", "online_offline.png")]
  np.testing.assert_array_equal(data["fresh head on the frozen network (pre_logits)"][1], [0.02])
  probe = data["converged probe, blind to scale and budget (pre_logits)"]
  np.testing.assert_array_equal(probe[0], [0.0, 6.0])  # at init and at the last epoch
  np.testing.assert_array_equal(probe[1], [0.42, 0.18])
