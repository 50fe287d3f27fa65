"""Sweeps: the spec, run names, local runs that are not redone, launch lines, the summary tables."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

import configs.digits
from rlp_jax import sweep as sweep_cli
from rlp_jax.analysis import sweep
from rlp_jax.training import loop


def _config(data_dir=""):
  config = configs.digits.get_config("tiny")
  config.data_dir = data_dir
  config.eval.batch_size = 256
  config.num_epochs = 1
  config.offline.at_init = False
  config.lock()
  return config


def test_spec_is_a_typed_grid_in_the_order_written():
  config = _config()
  points = sweep.points_from("rlp.reg_lambda=0,1e-2 ; model.width=8,16;augment.flip=true", config)
  assert points == [
    {"rlp.reg_lambda": 0.0, "model.width": 8, "augment.flip": True},
    {"rlp.reg_lambda": 0.0, "model.width": 16, "augment.flip": True},
    {"rlp.reg_lambda": 0.01, "model.width": 8, "augment.flip": True},
    {"rlp.reg_lambda": 0.01, "model.width": 16, "augment.flip": True},
  ]
  assert isinstance(points[0]["rlp.reg_lambda"], float) and isinstance(points[0]["model.width"], int)
  assert [sweep.run_name(p) for p in points[:3]] == [
    "rlp.reg_lambda=0,model.width=8,augment.flip=true",
    "rlp.reg_lambda=0,model.width=16,augment.flip=true",
    "rlp.reg_lambda=0.01,model.width=8,augment.flip=true",
  ]
  assert sweep.run_name({"rlp.reg_lambda": 1e5, "rlp.layers": "block_1,pre_logits"}) == (
    "rlp.reg_lambda=100000,rlp.layers=block_1+pre_logits"
  )
  # The Python forms: a grid dict, or exactly the listed points.
  assert sweep.points_from({"rlp.reg_lambda": [0.0, 1.0]}, config) == [
    {"rlp.reg_lambda": 0.0},
    {"rlp.reg_lambda": 1.0},
  ]
  assert sweep.points_from([{"rlp.layers": "block_1,pre_logits"}], config) == [
    {"rlp.layers": "block_1,pre_logits"}
  ]
  cfg = sweep.apply_point(config, points[3])
  assert (cfg.rlp.reg_lambda, cfg.model.width, cfg.augment.flip) == (0.01, 16, True)
  assert config.model.width == 16 and config.rlp.reg_lambda == 0.0  # the base config is untouched


@pytest.mark.parametrize(
  "spec,message",
  [
    ("rlp.lambda=0,1", "no key 'rlp.lambda'"),
    ("model.width=8,wide", "'wide' is not a int"),
    ("rlp.reg_lambda", "KEY=V1,V2"),
    ("rlp.reg_lambda=0,0.0", "twice"),
    ("", "empty"),
  ],
)
def test_bad_specs_are_refused_with_the_reason(spec, message):
  with pytest.raises(ValueError, match=message):
    sweep.points_from(spec, _config())


@pytest.fixture(scope="module")
def swept(tmp_path_factory, data_dir):
  """A tiny 2-point λ sweep (one epoch each), run once for the module."""
  root = str(tmp_path_factory.mktemp("sweep"))
  config = _config(data_dir)
  runs = sweep.make_runs(config, root, sweep.points_from("rlp.reg_lambda=0,1", config))
  logs = []
  assert sweep.run_local(runs, log=logs.append) == {
    "rlp.reg_lambda=0": "trained",
    "rlp.reg_lambda=1": "trained",
  }
  return config, root, runs


def _final(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f][-1]


def test_sweep_runs_each_point_in_its_own_workdir_and_summarizes(swept):
  config, root, runs = swept
  assert sorted(os.listdir(root)) == ["rlp.reg_lambda=0", "rlp.reg_lambda=1"]
  for run in runs:
    with open(os.path.join(run.workdir, "config.json")) as f:
      assert json.load(f)["rlp"]["reg_lambda"] == run.point["rlp.reg_lambda"]
  sweep.write_summary(root, runs)
  with open(os.path.join(root, "summary.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [r["run"] for r in rows] == ["rlp.reg_lambda=0", "rlp.reg_lambda=1"]
  assert [r["rlp.reg_lambda"] for r in rows] == ["0", "1"]
  for row, run in zip(rows, runs):
    final = _final(run.workdir)
    assert row["status"] == "done" and float(row["epoch"]) == 1.0
    for key in ("train/accuracy", "test/accuracy", "rlp/pre_logits/accuracy", "rlp/block_1/accuracy"):
      assert float(row[key]) == final[key], key
    assert float(row["gap"]) == pytest.approx(final["train/accuracy"] - final["test/accuracy"])
  with open(os.path.join(root, "summary.md")) as f:
    md = f.read().splitlines()
  table = [line for line in md if line.startswith("|")]
  assert len(table) == 4  # header, rule, two runs
  assert (
    "rlp.reg_lambda" in table[0] and "test/accuracy" in table[0] and "rlp/pre_logits/accuracy" in table[0]
  )
  final = _final(runs[1].workdir)
  assert f"{final['test/accuracy']:.4f}" in table[3] and table[3].startswith("| 1 | done |")


def test_rerunning_the_sweep_skips_finished_runs_and_emits_nothing_for_them(swept, monkeypatch, tmp_path):
  config, root, runs = swept
  monkeypatch.setattr(loop, "train_and_evaluate", lambda *a: pytest.fail("a finished run was redone"))
  assert sweep.run_local(runs, log=lambda s: None) == {
    "rlp.reg_lambda=0": "skipped (done)",
    "rlp.reg_lambda=1": "skipped (done)",
  }
  assert sweep.command_lines(runs, "tpu", "configs/digits.py:tiny", []) == []

  # A wider grid over the same root: only the new points are emitted, with every override they need.
  more = sweep.make_runs(config, root, sweep.points_from("rlp.reg_lambda=0,1,100", config))
  lines = sweep.command_lines(more, "tpu", "configs/digits.py:tiny", ["--config.num_epochs=1"], "--zone z")
  assert lines == [
    f"launch/tpu.sh run --config configs/digits.py:tiny --workdir {root}/rlp.reg_lambda=100 --zone z -- "
    "--config.num_epochs=1 --config.rlp.reg_lambda=100"
  ]
  (slurm,) = sweep.command_lines(more, "slurm", "configs/digits.py", [])
  assert slurm.startswith("launch/slurm.sh --config configs/digits.py --workdir ")
  (local,) = sweep.command_lines(more, "local", "configs/digits.py", [])
  assert local.startswith("python -m rlp_jax.main --config=configs/digits.py --workdir=")

  # A run whose loss became NaN is recorded and not retried.
  diverged = sweep.make_runs(config, str(tmp_path), [{"rlp.reg_lambda": 1e9}])

  def nan(cfg, workdir):
    os.makedirs(workdir)
    raise loop.NonFiniteLossError("The training loss became nan by step 3.")

  monkeypatch.setattr(loop, "train_and_evaluate", nan)
  assert sweep.run_local(diverged, log=lambda s: None) == {"rlp.reg_lambda=1e+09": "diverged"}
  assert sweep.run_local(diverged, log=lambda s: None) == {"rlp.reg_lambda=1e+09": "skipped (diverged)"}
  assert sweep.write_summary(str(tmp_path), diverged)[0]["status"] == "diverged"


def test_cli_emits_launch_lines(tmp_path):
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "rlp_jax.sweep",
      "--config=configs/digits.py:tiny",
      f"--workdir={tmp_path}",
      "--sweep=rlp.reg_lambda=0,1e4",
      "--config.rlp.num_labels=100",
      "--emit=slurm",
      "--launcher_args=--gpus-per-node 8",
    ],
    capture_output=True,
    text=True,
    check=True,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert out.stdout.splitlines() == [
    f"launch/slurm.sh --config configs/digits.py:tiny --workdir {tmp_path}/rlp.reg_lambda={v} "
    f"--gpus-per-node 8 -- --config.rlp.num_labels=100 --config.rlp.reg_lambda={v}"
    for v in ("0", "10000")
  ]


def test_a_config_file_can_declare_its_sweep(tmp_path):
  path = tmp_path / "exp.py"
  path.write_text(
    "from configs.digits import get_config\n"
    "def get_sweep(arg=''):\n"
    "  if arg == 'layers':\n"
    "    return [{'rlp.layers': 'block_1,pre_logits'}, {'rlp.layers': 'pre_logits'}]\n"
    "  return {'rlp.reg_lambda': [0.0, 1e2], 'rlp.num_labels': [10, 100]}\n"
  )
  config = _config()
  grid = sweep.points_from(sweep.sweep_from_config_file(f"{path}:tiny"), config)
  assert [sweep.run_name(p) for p in grid] == [
    "rlp.reg_lambda=0,rlp.num_labels=10",
    "rlp.reg_lambda=0,rlp.num_labels=100",
    "rlp.reg_lambda=100,rlp.num_labels=10",
    "rlp.reg_lambda=100,rlp.num_labels=100",
  ]
  points = sweep.points_from(sweep.sweep_from_config_file(f"{path}:layers"), config)
  assert sweep.apply_point(config, points[0]).rlp.layers == "block_1,pre_logits"
  assert sweep.sweep_from_config_file("configs/digits.py") is None  # no get_sweep: --sweep is needed
  assert sweep_cli._config_overrides(
    ["x", "--config.seed=3", "--config.rlp.num_labels", "20", "--emit=tpu"]
  ) == [
    "--config.seed=3",
    "--config.rlp.num_labels=20",
  ]
