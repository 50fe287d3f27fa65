"""examples/*.py run as a user runs them: a fresh process, its cwd outside the repository, rlp_jax imported as
an installed package (configs/ and tests/ not importable). Each prints a JSON summary as its last line."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, package_only_env, data_dir) -> dict[str, tuple[subprocess.Popen, pathlib.Path]]:
  """The examples, started together.

  Each is one process of imports and compilations that uses about one core, so on 2 cores this file takes
  about as long as the slowest. Each test waits for its own.
  """
  cwd = tmp_path_factory.mktemp("examples_cwd")
  workdir = cwd / "run"
  commands = {
    "own_train_step.py": ["--steps=300", "--reg_lambda=0.3"],
    "own_model.py": ["--epochs=8"],
    "train_from_python.py": [f"--workdir={workdir}", "--steps=10", "--epochs=1", f"--data_dir={data_dir}"],
  }
  procs = {
    name: subprocess.Popen(
      [sys.executable, str(EXAMPLES / name), *args],
      cwd=cwd,
      env=package_only_env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for name, args in commands.items()
  }
  yield {name: (proc, workdir) for name, proc in procs.items()}  # _result adds the stderr it read
  for proc in procs.values():
    proc.kill()
    proc.communicate()


def _result(runs, name: str) -> tuple[str, dict, pathlib.Path]:
  proc, workdir = runs[name]
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  *lines, last = stdout.strip().splitlines()
  runs[name] = (proc, workdir, stderr)
  return "\n".join(lines), json.loads(last), workdir


def test_own_train_step_routes_each_loss_to_its_parameters(runs):
  text, s, _ = _result(runs, "own_train_step.py")
  assert "L_class" in text and "L_rnd" in text and "L_reg" in text
  assert all(math.isfinite(v) for part in ("first", "last") for v in s[part].values()), s
  # The class head learns digits; the random-label head starts at chance, CE = log n.
  assert s["last"]["class"] < 0.3 * s["first"]["class"] and s["class_accuracy"] > 0.9, s
  assert abs(s["first"]["rnd"] - s["log_num_labels"]) < 0.3, s
  # ... and fits more of the 1,797 examples' random labels than chance (std of chance accuracy ~0.007).
  assert s["random_label_accuracy"] > s["chance"] + 0.02, s
  # Gradient routing, seen from outside the hand-written step: each loss reaches only its own parameters.
  g = s["grad_norms"]
  assert g["class"]["heads"] == 0.0 and g["class"]["model"] > 0, g
  assert g["rnd"]["model"] == 0.0 and g["rnd"]["heads"] > 0, g
  assert g["reg"]["heads"] == 0.0 and g["reg"]["model"] > 0, g


def test_train_from_python_writes_a_run_directory(runs):
  text, s, workdir = _result(runs, "train_from_python.py")
  assert "pre_logits/head_0" in text  # the summary table
  m = s["metrics"]
  assert m["epoch"] == 1 and 0.0 <= m["test/accuracy"] <= 1.0 and 0.0 <= m["rlp/pre_logits/accuracy"] <= 1.0
  assert m["rlp/pre_logits/chance"] == 0.1  # the tiny digits config's n = 10
  assert all(math.isfinite(m[f"loss/{k}"]) for k in ("class", "rnd", "reg", "total")), m
  # The config changed in Python is the run's: λ > 0, so L_total = L_class + L_rnd + λ·L_reg (epoch means).
  assert math.isclose(m["loss/total"], m["loss/class"] + m["loss/rnd"] + 0.1 * m["loss/reg"], rel_tol=1e-4)
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["rlp"]["reg_lambda"] == 0.1 and saved["max_steps_per_epoch"] == 10
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [10]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  assert (workdir / "summary.json").exists() and (workdir / "checkpoints").is_dir()
  # Called from Python, the run logs as the commands do: its epoch line on the console, the libraries'
  # narration (Orbax, tfds: about 200 lines) in WORKDIR/logs/train.log only.
  console = runs["train_from_python.py"][2].strip().splitlines()
  assert len(console) <= 3 and any("epoch 1:" in line for line in console), console
  assert "orbax" in (workdir / "logs" / "train.log").read_text().lower()


def test_own_model_with_batchnorm_and_dropout_trains_and_reports_its_controls(runs):
  text, s, _ = _result(runs, "own_model.py")
  assert "probe_at_init" in text and "offline_trained" in text
  # BatchNorm's running statistics move; Dropout's stream draws one key per step (carried, not trained).
  assert s["batch_stats_moved"] > 0.01, s
  assert s["rng_count"] == s["steps"] == 8 * (1797 // 128), s
  # The documented shapes: scalar losses and class accuracy, (heads,) random-label accuracy per layer.
  shapes = s["metric_shapes"]
  assert shapes["rlp/features/accuracy"] == [1], shapes
  assert all(shapes[k] == [] for k in ("loss/class", "loss/rnd", "loss/reg", "loss/total", "class_accuracy"))
  ev = s["evaluate"]
  assert ev["accuracy"] > 0.9 and ev["rlp/features/chance"] == 0.01, ev
  assert ev["rlp/features/accuracy"] > ev["rlp/features/chance"] + 0.01, ev
  assert all(0.0 <= v <= 1.0 for v in s["controls"].values()), s["controls"]
