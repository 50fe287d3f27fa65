"""The training loop: λ = 0 is a pure measurement, end-to-end runs, resumption, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from rlp_jax.data import input_pipeline
from rlp_jax.infra import rundir
from rlp_jax.infra.errors import UserError
from rlp_jax.training import checkpointing, loop, steps
from rlp_jax.training import experiment as experiment_lib


def _run_steps(config, num_steps: int):
  # A WRN's build on CPU is mostly compiling threefry for every parameter shape; RBG keys skip that.
  # The claim tested (bit-identity with and without heads) holds for any key implementation: the MLP
  # case keeps the default one.
  with jax.default_prng_impl("rbg" if config.model.name == "wrn" else "threefry2x32"):
    return _run_steps_with_default_keys(config, num_steps)


def _run_steps_with_default_keys(config, num_steps: int):
  experiment, state = experiment_lib.build(config)
  step = steps.make_train_step(experiment)
  batches = input_pipeline.train_batches(config, experiment.info, epoch=0)
  for _ in range(num_steps):
    state = step(state, experiment_lib.device_batch(experiment, next(batches)))
  return jax.device_get(state)


@pytest.mark.parametrize("model_name", ["mlp", "wrn"])
def test_lambda_zero_is_bit_identical_to_no_heads(tiny_config, model_name):
  """The paper's central promise: measuring does not change what the network learns."""
  config = tiny_config
  config.model.name = model_name
  config.model.width, config.model.depth = (16, 2) if model_name == "mlp" else (1, 10)
  config.model.dropout = 0.2
  config.optimizer.grad_clip_norm = 1.0  # clipping must see only the backbone's gradients
  config.optimizer.weight_decay = 1e-3
  config.rlp.layers = "all"
  config.rlp.reg_lambda = 0.0
  config.rlp.num_heads = 3
  config.probes.layers = "all"
  with_heads = _run_steps(config, 6)
  config.rlp.num_heads = 0
  config.probes.layers = ""
  without = _run_steps(config, 6)
  assert with_heads.params["rlp"] and not without.params["rlp"]
  chex_equal = jax.tree.map(
    lambda a, b: np.array_equal(a, b), with_heads.params["model"], without.params["model"]
  )
  assert all(jax.tree.leaves(chex_equal)), chex_equal
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, with_heads.batch_stats, without.batch_stats)))
  # ... and the comparison is sharp: a λ > 0 run does move the backbone differently.
  config.rlp.num_heads, config.rlp.reg_lambda = 3, 1.0
  regularized = _run_steps(config, 6)
  assert not all(
    jax.tree.leaves(jax.tree.map(np.array_equal, regularized.params["model"], without.params["model"]))
  )


def _read_jsonl(workdir):
  return rundir.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def test_end_to_end_writes_metrics_checkpoints_and_table(tiny_config, tmp_path):
  workdir = str(tmp_path / "run")
  result = loop.train_and_evaluate(tiny_config, workdir)
  records = _read_jsonl(workdir)
  assert [r["epoch"] for r in records] == [1, 2]
  last = records[-1]
  for key in (
    "step",
    "epoch",
    "train/accuracy",
    "test/accuracy",
    "loss/class",
    "loss/rnd",
    "loss/reg",
    "loss/total",
    "rlp/pre_logits/accuracy",
    "rlp/pre_logits/chance",
    "rlp/pre_logits/chance_corrected",
    "rlp/block_1/accuracy",
    "probe/block_1/test_accuracy",
    "probe/pre_logits/train_accuracy",
  ):
    assert key in last, key
  assert last["rlp/pre_logits/chance"] == pytest.approx(0.1)
  assert last["test/accuracy"] > 0.3  # it learned something in two tiny epochs
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  ckpt = checkpointing.Checkpoints(workdir, tiny_config, read_only=True)
  assert ckpt.resume_steps() == [22, 44]  # the last checkpoint.keep = 2 of 0, 22, 44
  assert ckpt.snapshot_steps() == [0, 22, 44]
  assert "offline @ init" in result["table"] and "pre_logits/head_0" in result["table"]
  rows = {r["layer"]: r for r in result["rlp_heads"]}
  assert 0.0 <= rows["pre_logits"]["offline_at_init_accuracy"] <= 1.0
  with open(os.path.join(workdir, "summary.json")) as f:
    assert json.load(f)["rlp_heads"] == result["rlp_heads"]


def test_resume_after_sigterm_equals_uninterrupted(tiny_config, tmp_path, monkeypatch):
  tiny_config.offline.at_init = False
  tiny_config.model.dropout = 0.1
  tiny_config.rlp.reg_lambda = 0.5
  tiny_config.max_steps_per_epoch = 12
  full = loop.train_and_evaluate(tiny_config, str(tmp_path / "full"))

  # Preempt in the middle of the second epoch (about step 18 of 24), then re-run the same call.
  original = input_pipeline.train_batches

  def preempting_batches(config, info, epoch, skip=0):
    for i, batch in enumerate(original(config, info, epoch, skip)):
      if epoch == 1 and skip + i == 8:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  workdir = str(tmp_path / "resumed")
  monkeypatch.setattr(input_pipeline, "train_batches", preempting_batches)
  with pytest.raises(SystemExit, match="Preempted"):
    loop.train_and_evaluate(tiny_config, workdir)
  monkeypatch.setattr(input_pipeline, "train_batches", original)
  # Saved mid-epoch 2 (batches are fetched two ahead of the step, so the signal lands a little earlier).
  assert 12 < max(checkpointing.Checkpoints(workdir, tiny_config, read_only=True).resume_steps()) < 24
  resumed = loop.train_and_evaluate(tiny_config, workdir)

  assert resumed["metrics"] == full["metrics"]
  assert _read_jsonl(workdir) == _read_jsonl(str(tmp_path / "full"))
  same = jax.tree.map(
    np.array_equal, jax.device_get(resumed["state"].params), jax.device_get(full["state"].params)
  )
  assert all(jax.tree.leaves(same))


def test_rerunning_a_finished_run_changes_nothing(tiny_config, tmp_path):
  tiny_config.offline.at_init = False
  tiny_config.max_steps_per_epoch = 5
  workdir = str(tmp_path / "run")
  first = loop.train_and_evaluate(tiny_config, workdir)
  again = loop.train_and_evaluate(tiny_config, workdir)
  assert again["metrics"]["test/accuracy"] == first["metrics"]["test/accuracy"]
  assert len(_read_jsonl(workdir)) == 2


# ---------------------------------------------------------------------------------------------------
# Bad input: each fails before compiling or writing anything, naming the key and the fix.
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("rlp.reg_lambda", -1.0, "config.rlp.reg_lambda"),
    ("rlp.num_labels", 1, "config.rlp.num_labels"),
    ("rlp.layers", "block_9", "config.rlp.layers"),
    ("rlp.reg_layers", "block_1", "config.rlp.reg_layers"),
    ("label_noise", 1.0, "config.label_noise"),
    ("label_noise", -0.1, "config.label_noise"),
    ("dataset", "no_such_dataset", "config.dataset"),
    ("dataset_fraction", 0.0, "config.dataset_fraction"),
    ("batch_size", 4096, "config.batch_size"),
    ("optimizer.name", "lion", "config.optimizer.name"),
    ("model.name", "resnet", "config.model.name"),
    # Values that used to crash later (ZeroDivisionError, numpy, TensorFlow) or pass silently.
    ("eval.every_epochs", 0, "config.eval.every_epochs"),
    ("log_every_steps", 0, "config.log_every_steps"),
    ("checkpoint.every_epochs", 0, "config.checkpoint.every_epochs"),
    ("model.width", 0, "config.model.width"),
    ("seed", -1, "config.seed"),
    ("eval.batch_size", 0, "config.eval.batch_size"),
    ("shuffle_buffer", 0, "config.shuffle_buffer"),
    ("rlp.reg_lambda", float("nan"), "config.rlp.reg_lambda"),
    ("max_steps_per_epoch", -5, "config.max_steps_per_epoch"),
    ("optimizer.warmup_epochs", -1.0, "config.optimizer.warmup_epochs"),
    ("offline.num_epochs", 0, "config.offline.num_epochs"),
    ("rlp.num_labels", 10**12, "config.rlp.num_labels"),
  ],
)
def test_bad_config_fails_early_with_the_key(tiny_config, tmp_path, key, value, message):
  section, _, leaf = key.rpartition(".")
  target = tiny_config[section] if section else tiny_config
  if key == "rlp.reg_layers":
    tiny_config.rlp.layers = "pre_logits"
  target[leaf] = value
  if key == "rlp.reg_layers":  # block_1 is sown, but has no head to regularize with
    with pytest.raises(UserError, match="config.rlp.layers does not measure"):
      loop.train_and_evaluate(tiny_config, str(tmp_path / "run"))
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    loop.train_and_evaluate(tiny_config, str(workdir))
  assert not (workdir / "checkpoints").exists()


def test_workdir_of_another_experiment_is_refused_and_left_intact(tiny_config, tmp_path):
  tiny_config.num_epochs = 1
  tiny_config.max_steps_per_epoch = 3
  tiny_config.offline.at_init = False
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny_config, workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  tiny_config.rlp.reg_lambda = 10.0
  with pytest.raises(ValueError, match=r"different experiment.*config\.rlp\.reg_lambda"):
    loop.train_and_evaluate(tiny_config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path):
  tiny_config.optimizer.learning_rate = 1e12
  tiny_config.optimizer.warmup_epochs = 0.0
  tiny_config.log_every_steps = 1
  workdir = str(tmp_path / "run")
  with pytest.raises(FloatingPointError, match="last good checkpoint"):
    loop.train_and_evaluate(tiny_config, workdir)
  ckpt = checkpointing.Checkpoints(workdir, tiny_config, read_only=True)
  assert ckpt.resume_steps() == [0]
  experiment, state = experiment_lib.build(tiny_config)
  step, restored = ckpt.restore_latest(state)
  assert step == 0
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(restored.params)))


def test_unknown_config_key_on_the_command_line_is_rejected(tmp_path, data_dir):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "rlp_jax.main",
      "--config=configs/digits.py:tiny",
      f"--workdir={tmp_path}",
      f"--config.data_dir={data_dir}",
      "--config.rlp.reg_lamda=1.0",
    ],
    capture_output=True,
    text=True,
    cwd=os.path.dirname(os.path.dirname(__file__)),
    timeout=300,
  )
  assert proc.returncode != 0
  assert "reg_lamda" in proc.stderr
  assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
  "override,key",
  [
    ("--config.rlp.reg_lambda=-1", "config.rlp.reg_lambda"),
    ("--config.rlp.layers=block_9", "config.rlp.layers"),
  ],
)
def test_a_bad_value_on_the_command_line_is_one_line_and_exit_status_2(tmp_path, data_dir, override, key):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "rlp_jax.main",
      "--config=configs/digits.py:tiny",
      f"--workdir={tmp_path / 'run'}",
      f"--config.data_dir={data_dir}",
      override,
    ],
    capture_output=True,
    text=True,
    cwd=os.path.dirname(os.path.dirname(__file__)),
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and errors[0].startswith(f"error: {key}"), proc.stderr[-2000:]
  assert not (tmp_path / "run" / "checkpoints").exists()
