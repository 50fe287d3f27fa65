"""Checkpoints a pod can afford and a bad day cannot break (docs/design.md §5): resume state and analysis
snapshots, asynchronous saves, damaged checkpoints, torn logs, a lock per workdir, lost checkpoints, missing
data, and the run planner's byte counts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rlp_jax.data import input_pipeline, tfds_source
from rlp_jax.infra import rundir
from rlp_jax.infra.errors import UserError
from rlp_jax.perf import plan
from rlp_jax.training import checkpointing, loop, offline_heads
from rlp_jax.training import experiment as experiment_lib


def _config(tiny_config):
  c = tiny_config
  c.num_epochs = 3
  c.max_steps_per_epoch = 6
  c.offline.at_init = False
  c.checkpoint.keep = 3
  return c


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
  from conftest import make_tiny_config

  config = _config(make_tiny_config(data_dir))
  workdir = str(tmp_path_factory.mktemp("ckpt") / "full")
  result = loop.train_and_evaluate(config, workdir)
  return config, workdir, result


def _params(result):
  return jax.device_get(result["state"].params)


def _same(a, b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


def _metrics(workdir):
  return rundir.read_jsonl(os.path.join(workdir, rundir.METRICS_FILE))


def _step_dir(workdir, step):
  return os.path.join(workdir, checkpointing.RESUME_DIR, str(step))


def _truncate_largest_file(path):
  files = [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 3)


def _remove_manifests(path):
  for r, _, fs in os.walk(path):
    for f in fs:
      if f == "manifest.ocdbt":
        os.remove(os.path.join(r, f))


def _empty(path):
  shutil.rmtree(path)
  os.makedirs(path)


def test_two_kinds_of_checkpoint_on_their_schedules(uninterrupted):
  config, workdir, _ = uninterrupted
  ckpt = checkpointing.Checkpoints(workdir, config, read_only=True)
  assert ckpt.resume_steps() == [0, 6, 12, 18][-config.checkpoint.keep :]
  assert ckpt.snapshot_steps() == [0, 6, 12, 18]
  # Snapshots hold the backbone and its batch statistics only: no optimizer state, no loss sums.
  snap = _saved_tree(workdir, checkpointing.SNAPSHOT_DIR, 18)
  assert set(snap) == {"params", "batch_stats"}
  assert set(snap["params"]) == {"model"}  # snapshot_heads=False: no heads either
  assert {"opt_state", "params", "loss_sums"} <= set(_saved_tree(workdir, checkpointing.RESUME_DIR, 18))


def _saved_tree(workdir, kind, step):
  """The tree structure Orbax recorded for a saved step (its metadata; no array is read)."""
  meta = ocp.StandardCheckpointer().metadata(os.path.join(workdir, kind, str(step), "default"))
  meta = getattr(meta, "item_metadata", meta)
  return getattr(meta, "tree", meta)


def test_offline_heads_on_a_snapshot_equal_those_on_the_full_checkpoint(uninterrupted):
  config, workdir, _ = uninterrupted
  experiment, state = experiment_lib.build(config)
  ckpt = checkpointing.Checkpoints(workdir, config, read_only=True)
  snap = ckpt.restore_snapshot(18, state)
  full = ckpt.restore_for_analysis(checkpointing.RESUME_DIR, 18, state)
  assert _same(jax.device_get(snap.params["model"]), jax.device_get(full.params["model"]))
  a = offline_heads.offline_accuracy(experiment, snap.params["model"], snap.batch_stats)
  b = offline_heads.offline_accuracy(experiment, full.params["model"], full.batch_stats)
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("damage", [_truncate_largest_file, _remove_manifests, _empty])
def test_a_damaged_latest_checkpoint_falls_back_and_ends_as_uninterrupted(uninterrupted, tmp_path, damage):
  config, full_dir, full = uninterrupted
  workdir = str(tmp_path / "run")
  shutil.copytree(full_dir, workdir)
  damage(_step_dir(workdir, 18))
  with pytest.warns(UserWarning, match=r"checkpoints/18 cannot be read.*18\.unreadable"):
    again = loop.train_and_evaluate(config, workdir)
  assert _same(_params(again), _params(full))
  assert _metrics(workdir) == _metrics(full_dir)
  names = sorted(os.listdir(os.path.join(workdir, checkpointing.RESUME_DIR)))
  assert "18.unreadable" in names and "18" in names  # set aside, nothing deleted; 18 written anew


def test_a_torn_last_log_line_is_tolerated(uninterrupted, tmp_path):
  config, full_dir, full = uninterrupted
  workdir = str(tmp_path / "run")
  shutil.copytree(full_dir, workdir)
  shutil.rmtree(_step_dir(workdir, 18))  # killed while writing epoch 3's record, before its checkpoint
  with open(os.path.join(workdir, rundir.METRICS_FILE), "rb+") as f:
    f.truncate(os.path.getsize(f.name) - 40)
  with pytest.warns(UserWarning, match="not a complete JSON record"):
    again = loop.train_and_evaluate(config, workdir)
  assert _metrics(workdir) == _metrics(full_dir)
  assert _same(_params(again), _params(full))


def test_preempted_while_an_async_save_is_in_flight_resumes_exactly(uninterrupted, tmp_path, monkeypatch):
  config, full_dir, full = uninterrupted
  workdir = str(tmp_path / "run")
  # Preempted one step after epoch 1's checkpoint started writing in the background.
  monkeypatch.setattr(loop._Preemption, "stop_now", lambda self, step: step == 7)
  with pytest.raises(SystemExit, match="step 7"):
    loop.train_and_evaluate(config, workdir)
  assert 7 in checkpointing.Checkpoints(workdir, config, read_only=True).resume_steps()
  monkeypatch.undo()
  resumed = loop.train_and_evaluate(config, workdir)
  assert _same(_params(resumed), _params(full))
  assert _metrics(workdir) == _metrics(full_dir)


def test_a_workdir_whose_checkpoints_are_gone_is_refused_not_truncated(uninterrupted, tmp_path):
  config, full_dir, _ = uninterrupted
  workdir = str(tmp_path / "run")
  shutil.copytree(full_dir, workdir)
  shutil.rmtree(os.path.join(workdir, checkpointing.RESUME_DIR))
  before = open(os.path.join(workdir, rundir.METRICS_FILE)).read()
  with pytest.raises(ValueError, match="records training up to step 18.*no readable checkpoint"):
    loop.train_and_evaluate(config, workdir)
  assert open(os.path.join(workdir, rundir.METRICS_FILE)).read() == before


_HOLD = """
import sys, time
from rlp_jax.infra import rundir
with rundir.lock(sys.argv[1]):
  print("locked", flush=True)
  time.sleep(600)
"""


def test_a_second_process_is_refused_while_the_first_lives_and_not_after_a_kill(tiny_config, tmp_path):
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen([sys.executable, "-c", _HOLD, workdir], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match=rf"--workdir={workdir} is in use by process {holder.pid}"):
      loop.train_and_evaluate(tiny_config, workdir)
    assert not os.path.exists(os.path.join(workdir, rundir.METRICS_FILE))
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with rundir.lock(workdir):  # the kernel released the killed process's lock
    pass


def test_a_dataset_that_cannot_be_prepared_fails_fast_and_leaves_nothing(tiny_config, tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_source, "DOWNLOAD_PROBE", ("127.0.0.1", 9))  # nothing listens: no network
  tfds_source.builder.cache_clear()
  tiny_config.dataset = "cifar100"
  tiny_config.data_dir = str(tmp_path / "tfds")
  start = time.time()
  with pytest.raises(tfds_source.MissingDataError) as e:
    input_pipeline.get_info(tiny_config)
  assert time.time() - start < 20
  message = str(e.value)
  assert tiny_config.data_dir in message and "tfds build cifar100" in message and "digits" in message
  assert not os.path.exists(tiny_config.data_dir) or not any(
    "incomplete" in name for _, dirs, _ in os.walk(tiny_config.data_dir) for name in dirs
  )


def test_the_planner_counts_the_bytes_that_are_written(uninterrupted):
  config, workdir, _ = uninterrupted
  p = plan.plan(config)

  def written(kind, step):
    """Bytes of the arrays Orbax recorded for that checkpoint, and the bytes of its files on disk."""
    leaves = jax.tree.leaves(_saved_tree(workdir, kind, step), is_leaf=lambda x: hasattr(x, "shape"))
    arrays = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in leaves)
    root = os.path.join(workdir, kind, str(step))
    files = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(root) for f in fs)
    return arrays, files, len(leaves)

  for kind, planned in (
    (checkpointing.RESUME_DIR, p["resume_checkpoint_bytes"]),
    (checkpointing.SNAPSHOT_DIR, p["snapshot_bytes"]),
  ):
    arrays, files, leaves = written(kind, 18)
    assert arrays == planned, kind  # the planner counts exactly the tree that is written
    # On disk: compressed arrays plus Orbax's metadata, a few kB per array for a model this small.
    assert files < planned + 4_000 * leaves, (kind, files, planned)
  assert p["snapshot_bytes"] < p["resume_checkpoint_bytes"] / 2  # no optimizer moments
  assert p["snapshots"] == 4 and p["resume_checkpoints_kept"] == 3
  assert p["storage_bytes"] == 3 * p["resume_checkpoint_bytes"] + 4 * p["snapshot_bytes"]
  assert p["steps"] == 18 and p["flops_per_run"] == 18 * p["flops_per_step"] > 0


def test_device_prefetch_yields_the_same_batches_in_order(uninterrupted):
  config, _, _ = uninterrupted
  experiment, _ = experiment_lib.build(config)
  host = list(input_pipeline.train_batches(config, experiment.info, 0))
  for size in (0, 1, 2, 10):
    placed = list(experiment_lib.device_batches(experiment, host, size))
    assert len(placed) == len(host)
    for h, d in zip(host, placed):
      np.testing.assert_array_equal(np.asarray(d["image"]), h["image"])
      np.testing.assert_array_equal(np.asarray(d["rlp_labels"]), h["rlp_labels"])


def test_dropping_redone_records_keeps_every_other_line_damaged_ones_included(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  lines = [
    '{"step": 6, "epoch": 1}\n',
    '{"step": 12, "ep\n',
    '{"step": 18, "epoch": 3}\n',
    '{"step": 24, "ep',
  ]
  with open(path, "w") as f:
    f.writelines(lines)
  with pytest.warns(UserWarning, match="kept as it is"):
    assert rundir.drop_records_after(path, 12) == 1
  with open(path) as f:
    assert f.read() == lines[0] + lines[1] + lines[3] + "\n"
  with pytest.warns(UserWarning):
    assert rundir.drop_records_after(path, 30) == 0  # nothing to drop: the file is not rewritten
