"""perf/plan.py's report: the memory against the target's HBM, where the memory figure comes from, storage."""

from __future__ import annotations

import pytest

import configs.digits
from rlp_jax.infra import config_args
from rlp_jax.perf import benchmark, flops, plan
from rlp_jax.perf.benchmark import synthetic_batch
from rlp_jax.training import experiment as experiment_lib
from rlp_jax.training.steps import make_train_step


def _plan(memory: float, kind: str) -> dict:
  return {
    "steps": 1000,
    "mesh": {"data": 8, "model": 1},
    "devices": 8,
    "device_kind": "cpu",
    "params": {"model": 10, "rlp": 20, "probes": 0},
    "device_memory_bytes": memory,
    "compiled_for": "cpu",
    "target_kind": kind,
    "target_hbm_bytes": benchmark.hbm_bytes(kind),
    "flops_per_step": 1e12,
    "flops_per_run": 1e15,
    "flops_per_eval": 2e12,
    "eval_train_examples": 10_000,
    "eval_test_examples": 10_000,
    "eval_share": 0.024,
    "resume_checkpoint_bytes": 1.98e9,
    "resume_checkpoints_kept": 2,
    "snapshot_bytes": 0.35e9,
    "snapshots": 91,
    "storage_bytes": 2 * 1.98e9 + 91 * 0.35e9,
    "storage_bytes_all_full": 180.32e9,
  }


def test_memory_is_checked_against_the_targets_hbm_and_its_source_named():
  config = configs.digits.get_config("tiny")
  fits = plan.format_plan(config, _plan(60e9, "h100"))
  assert "fits a h100's 80.00 GB HBM (75% of it)" in fits and "compiles it for cpu here" in fits
  too_big = plan.format_plan(config, _plan(100e9, "v5p"))
  assert "WARNING           does not fit: 100.00 GB per device > 95.00 GB HBM of a v5p" in too_big
  assert "HBM" not in plan.format_plan(config, _plan(100e9, ""))  # no target named: nothing to compare


def test_storage_is_stated_as_its_sum():
  text = plan.format_plan(configs.digits.get_config("tiny"), _plan(1e9, ""))
  assert "resume states 2 x 1.98 GB + snapshots 91 x 0.35 GB = 35.81 GB" in text


def _eval_share(config) -> float:
  """The planner's evaluation share, from traced FLOPs only (plan() also compiles, for the memory)."""
  info = benchmark.data_info(config)
  experiment, state = experiment_lib.build(config, info, abstract=True)
  step = flops.count(make_train_step(experiment), state, synthetic_batch(experiment, abstract=True))
  per_eval = plan.eval_flops(experiment, state)["flops_per_eval"]
  epoch_train = step * experiment.total_steps / config.num_epochs
  return per_eval / config.eval.every_epochs / (epoch_train + per_eval / config.eval.every_epochs)


@pytest.mark.parametrize(
  "path", ["configs/wrn_cifar100.py", "configs/vit_cifar100.py", "configs/vit_imagenet.py"]
)
def test_the_paper_configs_spend_at_most_3_percent_of_their_flops_evaluating(path):
  config = config_args.from_file(path)
  share = _eval_share(config)
  assert 0.005 < share <= 0.03, share
  if config.eval.every_epochs > 1:  # the default that keeps it there: every epoch would not
    config.eval.every_epochs = 1
    assert _eval_share(config) > 0.03


def test_the_host_line_is_the_batch_over_the_planned_step_time_and_flags_an_input_bound_run():
  p = {"flops_per_step": 27.17e12, "devices": 16, "peak_flops_per_device": 989e12, "mfu": 0.33}
  step_s = 27.17e12 / (16 * 989e12 * 0.33)
  out = plan.host_input(p, 1024, devices_per_host=8, rate_per_core=400.0, host_cores=96)
  assert out["step_seconds"] == pytest.approx(step_s)
  assert out["host_images_per_s"] == pytest.approx(1024 / step_s / 2)  # 2 hosts share the batch
  assert out["host_cores_needed"] == pytest.approx(1024 / step_s / 2 / 400) and out["input_bound"]
  text = plan._host_lines(out)
  assert "WARNING           input-bound: more than the host's 96 cores" in text[1]
  assert "pass --input_rate_per_core" in plan._host_lines(plan.host_input(p, 1024, devices_per_host=8))[0]
  assert plan.host_input({**p, "peak_flops_per_device": None}, 1024, devices_per_host=8) == {}


@pytest.mark.parametrize(
  "config_file, transform",
  [
    ("configs/vit_imagenet.py", "inception"),
    ("configs/vit_imagenet.py:flip_only", "resize"),
    ("configs/wrn_cifar100.py", "decoded"),
  ],
)
def test_without_a_target_rate_the_host_line_uses_the_rate_measured_here_for_the_configs_transform(
  config_file, transform
):
  config = config_args.from_file(config_file)
  assert plan.train_transform(config) == transform
  p = {"flops_per_step": 27.17e12, "devices": 8, "peak_flops_per_device": 989e12, "mfu": 0.33}
  out = plan.host_input(p, 1024, devices_per_host=8, transform=transform, host_cores=64)
  full, resized = plan.MEASURED_PER_CORE[transform]
  assert out["host_cores_needed"] == pytest.approx(out["host_images_per_s"] / full)
  assert out["input_bound"] == (out["host_cores_needed"] > 64)
  lines = plan._host_lines(out)
  assert "measured on one core here" in lines[1]
  assert ("resized once" in lines[1]) == (resized is not None)
  # The target's own rate replaces the one measured here.
  given = plan.host_input(p, 1024, devices_per_host=8, transform=transform, rate_per_core=2000.0)
  assert given["input_rate_per_core"] == 2000.0 and "input_rate_measured_here" not in given
