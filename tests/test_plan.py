"""perf/plan.py's report: the memory against the target's HBM, where the memory figure comes from, storage."""

from __future__ import annotations

import configs.digits
from rlp_jax.perf import benchmark, plan


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
