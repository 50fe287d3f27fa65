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
from rlp_jax.data import input_pipeline
from rlp_jax.infra import multihost
from rlp_jax.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 420


def _overrides(data_dir: str) -> dict:
  return {
    "data_dir": data_dir,
    "eval.batch_size": 256,
    "offline.num_epochs": 2,
    "log_every_steps": 1000,
  }


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(argv: list[str], logs: str) -> list[subprocess.Popen]:
  """Two processes of one JAX job, as a cluster launcher would start them (rlp_jax.multihost reads these
  variables). Output goes to files (``logs``-0.txt, -1.txt): a full pipe would block a host inside a
  collective."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
  env.update(
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=2",
    JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}",
    JAX_NUM_PROCESSES="2",
    PYTHONPATH=ROOT,
  )
  procs = []
  for i in range(2):
    with open(f"{logs}-{i}.txt", "w") as log:
      procs.append(
        subprocess.Popen(
          argv, cwd=ROOT, env={**env, "JAX_PROCESS_ID": str(i)}, stdout=log, stderr=subprocess.STDOUT
        )
      )
      procs[-1].log = log.name
  return procs


def _launch(workdir: str, overrides: dict, logs: str) -> list[subprocess.Popen]:
  """Both hosts running ``python -m rlp_jax.main`` on the digits demo's tiny config."""
  argv = [sys.executable, "-m", "rlp_jax.main", "--config=configs/digits.py:tiny", f"--workdir={workdir}"]
  return _start(argv + [f"--config.{k}={v}" for k, v in overrides.items()], logs)


# JAX alone, no rlp_jax: two processes join one job and sum over the 4 devices of both.
_PROBE = """
import os
import jax, jax.numpy as jnp
from jax.experimental import multihost_utils
jax.distributed.initialize(num_processes=2, process_id=int(os.environ["JAX_PROCESS_ID"]))
assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.device_count())
print("sum", multihost_utils.process_allgather(jnp.float32(jax.process_index() + 1)).sum())
"""


@pytest.fixture(scope="module")
def two_process_jax(tmp_path_factory):
  """Skips where this machine cannot run a two-process JAX job at all (no localhost TCP, say): that is the
  environment, not this code. Everything beyond joining the job is asserted by the tests."""
  logs = str(tmp_path_factory.mktemp("probe") / "probe")
  results = _finish(_start([sys.executable, "-c", _PROBE], logs))
  if any(rc != 0 or "sum 3.0" not in out for rc, out in results):
    pytest.skip(f"a two-process JAX job cannot run on this machine: {results[0][1][-800:]}")


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
  """(exit code, output) of each host; both are killed if either outlives the timeout."""
  deadline = time.time() + TIMEOUT
  try:
    for p in procs:
      p.wait(timeout=max(1.0, deadline - time.time()))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  results = []
  for p in procs:
    with open(p.log) as f:
      results.append((p.returncode, f.read()))
  return results


def _metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _table(out: str) -> list[str]:
  """The end-of-run table: the class accuracy line and one line per RLP head."""
  return out[out.index("epoch 2: class accuracy") :].splitlines()[:4]


@pytest.mark.skipif(sys.platform != "linux", reason="localhost multi-process JAX is exercised on Linux")
def test_two_hosts_preempt_resume_and_restore_onto_one_device(two_process_jax, data_dir, tmp_path):
  overrides = _overrides(data_dir)
  config = configs.digits.get_config("tiny")
  config.update_from_flattened_dict(overrides)
  info = input_pipeline.get_info(config)  # prepares the dataset once, before two processes read it
  steps_per_epoch = info.num_train // config.batch_size

  # An uninterrupted two-host run: both hosts report the same table, offline heads included.
  whole = str(tmp_path / "whole")
  results = _finish(_launch(whole, overrides, str(tmp_path / "whole")))
  for rc, out in results:
    assert rc == 0, out[-3000:]
  assert _table(results[0][1]) == _table(results[1][1])
  with open(os.path.join(whole, "summary.json")) as f:
    head_rows = json.load(f)["rlp_heads"]

  # SIGTERM to host 1 once the initial checkpoint is saved (the step is still compiling): both hosts
  # stop at one step early in the first epoch, save, and exit.
  split = str(tmp_path / "split")
  no_offline = {**overrides, "offline.at_init": False}  # (the runs above and below compare metrics only)
  procs = _launch(split, no_offline, str(tmp_path / "split"))
  first = os.path.join(split, "checkpoints", "0")
  deadline = time.time() + TIMEOUT
  while not os.path.exists(first) and time.time() < deadline and procs[1].poll() is None:
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)
  results = _finish(procs)
  stopped = set()
  for rc, out in results:
    assert rc != 0 and "Preempted: checkpoint saved at step" in out, out[-3000:]
    stopped.add(int(out.split("Preempted: checkpoint saved at step ")[1].split(";")[0]))
  (step,) = stopped  # the same step on both hosts
  assert 1 <= step < 2 * steps_per_epoch
  assert str(step) in os.listdir(os.path.join(split, "checkpoints"))

  # The same command again resumes, and ends exactly where the uninterrupted run did.
  for rc, out in _finish(_launch(split, no_offline, str(tmp_path / "resumed"))):
    assert rc == 0, out[-3000:]
  assert _metrics(split) == _metrics(whole)

  # The two-host checkpoint restored by one process on one device: the same final evaluation.
  result = loop.train_and_evaluate(config, whole)
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
  assert int(result["state"].step) == 2 * steps_per_epoch


def test_launch_variables_decide_and_configure_the_multihost_join():
  assert not multihost.is_multihost({})
  assert multihost.is_multihost({"SLURM_NTASKS": "4"}) and not multihost.is_multihost({"SLURM_NTASKS": "1"})
  assert multihost.is_multihost({"TPU_WORKER_HOSTNAMES": "w0,w1"})
  env = {"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  assert multihost.is_multihost(env)
  assert multihost.initialize_args(env) == {"num_processes": 4, "process_id": 3}
  assert multihost.initialize_args({"JAX_COORDINATOR_ADDRESS": "h0:1234"}) == {}  # TPU/SLURM: JAX finds them
  with pytest.raises(ValueError, match="JAX_PROCESS_ID='first' must be an integer"):
    multihost.initialize_args({"JAX_PROCESS_ID": "first"})
