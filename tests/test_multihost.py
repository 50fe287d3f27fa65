"""Two processes on this machine as two hosts of one job: the real multi-host code paths, on CPU.

``jax.distributed`` over localhost with CPU collectives (gloo), two simulated devices per process (a
2 x 2 = 4-device data-parallel mesh): each host reads its own slice of the data, both write one Orbax
checkpoint, SIGTERM on one host stops both at the same step (JAX's preemption sync point), the relaunch
resumes to exactly the uninterrupted run's metrics, and the finished run restores onto one process with
one device and evaluates to the same numbers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import configs.digits
from rlp_jax import input_pipeline, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 420


def _overrides(data_dir: str) -> dict:
  return {
    "data_dir": data_dir,
    "num_epochs": 4,
    "eval.batch_size": 256,
    "offline.num_epochs": 2,
    "log_every_steps": 1000,
  }


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir: str, overrides: dict) -> list[subprocess.Popen]:
  """Both hosts of the job, as a cluster launcher would start them (rlp_jax.main reads these variables)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
  env.update(
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
    JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}",
    JAX_NUM_PROCESSES="2",
    PYTHONPATH=ROOT,
  )
  args = [sys.executable, "-m", "rlp_jax.main", "--config=configs/digits.py:tiny", f"--workdir={workdir}"]
  args += [f"--config.{k}={v}" for k, v in overrides.items()]
  return [
    subprocess.Popen(
      args,
      cwd=ROOT,
      env={**env, "JAX_PROCESS_ID": str(i)},
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
  deadline = time.time() + TIMEOUT
  results = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    results.append((p.returncode, out))
  return results


def _metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _table(out: str) -> str:
  return out[out.index("epoch 4: class accuracy") :]


@pytest.mark.skipif(sys.platform != "linux", reason="localhost multi-process JAX is exercised on Linux")
def test_two_hosts_preempt_resume_and_restore_onto_one_device(data_dir, tmp_path):
  overrides = _overrides(data_dir)
  config = configs.digits.get_config("tiny")
  config.update_from_flattened_dict(overrides)
  info = input_pipeline.get_info(config)  # prepares the dataset once, before two processes read it
  steps_per_epoch = info.num_train // config.batch_size

  # An uninterrupted two-host run: both hosts report the same table, offline heads included.
  whole = str(tmp_path / "whole")
  results = _finish(_launch(whole, overrides))
  for rc, out in results:
    assert rc == 0, out[-3000:]
  assert _table(results[0][1]) == _table(results[1][1])
  with open(os.path.join(whole, "summary.json")) as f:
    head_rows = json.load(f)["rlp_heads"]

  # SIGTERM to host 1 once the first epoch is saved: both hosts stop at one step, save, and exit.
  split = str(tmp_path / "split")
  procs = _launch(split, overrides)
  first = os.path.join(split, "checkpoints", str(steps_per_epoch))
  deadline = time.time() + TIMEOUT
  while not os.path.exists(first) and time.time() < deadline and procs[1].poll() is None:
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  results = _finish(procs)
  stopped = set()
  for rc, out in results:
    assert rc != 0 and "Preempted: checkpoint saved at step" in out, out[-3000:]
    stopped.add(int(out.split("Preempted: checkpoint saved at step ")[1].split(";")[0]))
  (step,) = stopped  # the same step on both hosts
  assert steps_per_epoch <= step < 4 * steps_per_epoch
  assert str(step) in os.listdir(os.path.join(split, "checkpoints"))

  # The same command again resumes, and ends exactly where the uninterrupted run did.
  for rc, out in _finish(_launch(split, overrides)):
    assert rc == 0, out[-3000:]
  assert _metrics(split) == _metrics(whole)

  # The two-host checkpoint restored by one process on one device: the same final evaluation.
  result = train.train_and_evaluate(config, whole)
  final = _metrics(whole)[-1]
  for key, value in result["metrics"].items():
    if key.endswith("accuracy"):
      assert value == final[key], key
    elif key != "epoch":
      np.testing.assert_allclose(value, final[key], rtol=1e-5, err_msg=key)
  # ... and the offline heads at initialization (features gathered from both hosts, in index order)
  # agree with those fitted by one process.
  assert [r["online_accuracy"] for r in result["rlp_heads"]] == [r["online_accuracy"] for r in head_rows]
  np.testing.assert_allclose(
    [r["offline_at_init_accuracy"] for r in result["rlp_heads"]],
    [r["offline_at_init_accuracy"] for r in head_rows],
    atol=1e-9,
  )
  assert int(result["state"].step) == 4 * steps_per_epoch
