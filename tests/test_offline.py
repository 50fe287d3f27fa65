"""Offline heads on saved checkpoints (Fig. 2B): the CLI's records, frozen network, same labels and init,
the head learns, resumption."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from rlp_jax import offline as offline_cli
from rlp_jax.analysis import offline
from rlp_jax.data import input_pipeline, labels
from rlp_jax.heads import heads as heads_lib
from rlp_jax.infra import rundir
from rlp_jax.infra.errors import UserError
from rlp_jax.training import checkpointing, offline_heads
from rlp_jax.training import experiment as experiment_lib


@pytest.fixture(scope="module")
def run(analysis_run):
  return analysis_run


@pytest.fixture
def workdir(run, tmp_path):
  """A private copy of the run, so that each test writes its own offline.jsonl."""
  dst = str(tmp_path / "run")
  shutil.copytree(run[1], dst)
  return dst


def _restore_all(config, state, workdir):
  ckpt = checkpointing.Checkpoints(workdir, config, read_only=True)
  return {s: jax.device_get(ckpt.restore_snapshot(s, state)) for s in ckpt.snapshot_steps()}


def test_cli_records_every_checkpoint_beside_online_and_leaves_the_network_untouched(run, workdir):
  config = run[0]
  state = experiment_lib.build(config)[1]
  before = _restore_all(config, state, workdir)
  wd, cfg, output, steps = offline_cli.parse_cli(
    ["offline", f"--workdir={workdir}", "--config.offline.num_epochs=10"]
  )
  assert (wd, output, steps, cfg.offline.num_epochs) == (workdir, "offline.jsonl", None, 10)
  assert cfg.model.width == 32 and cfg.data_dir == config.data_dir  # the run's own config, plus overrides

  records = offline.run_offline(wd, cfg, output=output, log=lambda s: None)

  assert [r["step"] for r in records] == [0, 66, 132]  # step 0 (initialization) included
  assert [r["epoch"] for r in records] == [0.0, 3.0, 6.0]
  assert rundir.read_jsonl(os.path.join(workdir, "offline.jsonl")) == records
  online = {r["step"]: r for r in rundir.read_jsonl(os.path.join(workdir, "metrics.jsonl"))}
  for r in records:
    for layer in ("block_1", "pre_logits"):
      assert 0.0 <= r[f"offline/{layer}/accuracy"] <= 1.0
      assert r[f"offline/{layer}/chance"] == pytest.approx(1 / 200)
      heads = [r[f"offline/{layer}/head_{k}/accuracy"] for k in (0, 1)]  # K = 2 label draws
      assert r[f"offline/{layer}/accuracy"] == pytest.approx(np.mean(heads))
      if r["step"]:
        assert r[f"online/{layer}/accuracy"] == online[r["step"]][f"rlp/{layer}/accuracy"]
      else:
        assert f"online/{layer}/accuracy" not in r  # nothing is evaluated at initialization
  with open(os.path.join(workdir, "offline.config.json")) as f:
    assert json.load(f)["offline"]["num_epochs"] == 10
  # Fig. 2B's control: with the same head, labels and budget, the frozen trained network lets the head fit
  # far more random labels than the network at initialization.
  acc = [r["offline/pre_logits/accuracy"] for r in records]
  assert acc[2] > 3 * acc[0] and acc[2] > 0.03, acc

  after = _restore_all(config, state, workdir)
  for step in before:  # every saved network is bit-identical after its offline heads were trained
    same = jax.tree.map(np.array_equal, before[step].params, after[step].params)
    assert all(jax.tree.leaves(same)), step
    assert all(
      jax.tree.leaves(jax.tree.map(np.array_equal, before[step].batch_stats, after[step].batch_stats))
    )


def test_offline_heads_use_the_online_labels_and_initialization_and_learn(run):
  config, workdir = run
  experiment, state = experiment_lib.build(config)
  ckpt = checkpointing.Checkpoints(workdir, config, read_only=True)
  init = jax.device_get(ckpt.restore_snapshot(0, state))
  last = ckpt.restore_snapshot(132, state)

  # Same initialization: the heads offline_heads.fit_heads builds are the online heads at step 0.
  fresh = nnx.split(
    heads_lib.build_heads(config, experiment.feature_dims, experiment.rlp_layers, experiment.num_labels)
  )[1]
  same = jax.tree.map(np.array_equal, fresh.to_pure_dict(), init.params["rlp"])
  assert jax.tree.leaves(same) and all(jax.tree.leaves(same))

  # Same labels: those of extract_features are the hashed labels the online heads trained on.
  feats, y = offline_heads.extract_features(
    experiment, last.params["model"], last.batch_stats, experiment.rlp_layers
  )
  # ... in order of the global index (whatever order, and however many hosts, read them).
  index = np.sort(
    np.concatenate(
      [b["index"][b["mask"]] for b in input_pipeline.eval_batches(config, experiment.info, "train_eval")]
    )
  )
  dim = experiment.feature_dims["pre_logits"]
  assert y.shape == (experiment.info.num_train, 2) and feats["pre_logits"].shape == (
    experiment.info.num_train,
    dim,
  )
  np.testing.assert_array_equal(y, labels.random_labels(config.seed, index, 200, 2))
  assert (y[:, 0] != y[:, 1]).mean() > 0.8  # two independent label draws
  online = {}
  for batch in input_pipeline.train_batches(config, experiment.info, epoch=1):
    online.update(zip(batch["index"].tolist(), batch["rlp_labels"].tolist()))
  seen = [i for i, idx in enumerate(index) if int(idx) in online]
  assert len(seen) > 1000
  np.testing.assert_array_equal(y[seen], [online[int(index[i])] for i in seen])

  # The offline head learns: its random-label accuracy rises from that of its (shared) initialization.
  start = offline_heads.fit_heads(experiment, feats, y, num_epochs=0, batch_size=128)
  trained = offline_heads.fit_heads(experiment, feats, y, num_epochs=10, batch_size=64)
  assert start["pre_logits"].mean() < 0.015  # the fresh head guesses (chance 0.005)
  assert trained["pre_logits"].mean() > 3 * start["pre_logits"].mean() + 0.02, (start, trained)
  assert trained["block_1"].mean() > start["block_1"].mean(), (start, trained)


def test_a_killed_offline_run_resumes_after_its_last_written_step(run, workdir, monkeypatch):
  path = os.path.join(workdir, "offline.jsonl")
  calls = []
  original = offline_heads.frozen_controls

  def killed_at_second_checkpoint(experiment, params, stats, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt  # killed while step 66's head trains
    return original(experiment, params, stats, **kwargs)

  monkeypatch.setattr(offline_heads, "frozen_controls", killed_at_second_checkpoint)
  with pytest.raises(KeyboardInterrupt):
    offline.run_offline(workdir, log=lambda s: None)
  (first,) = rundir.read_jsonl(path)
  assert first["step"] == 0
  with open(path, "a") as f:  # and a line cut short, as by a kill while writing it
    f.write('{"step": 66, "epoch": 3.0, "offline/blo')

  calls.clear()
  monkeypatch.setattr(offline_heads, "frozen_controls", lambda *a, **k: calls.append(1) or original(*a, **k))
  resumed = offline.run_offline(workdir, steps=[66], log=lambda s: None)
  assert len(calls) == 1  # only step 66: step 0 was written before the kill
  assert [r["step"] for r in resumed] == [0, 66] and resumed[0] == first
  with pytest.warns(UserWarning, match="offline.jsonl:2: not a complete JSON record"):
    assert rundir.read_jsonl(path) == resumed
  with open(path) as f:  # the cut line is kept as it was (nothing a user saved is deleted), on its own line
    assert f.read().splitlines()[1] == '{"step": 66, "epoch": 3.0, "offline/blo'

  assert offline.run_offline(workdir, steps=[66], log=lambda s: None) == resumed and len(calls) == 1
  # The same with the config the run was trained with (not read back from config.json).
  assert offline.run_offline(workdir, run[0], steps=[66], log=lambda s: None) == resumed and len(calls) == 1

  # Other settings than the file was written with: refused, rather than splicing two curves.
  other = rundir.load_config(workdir)
  other.offline.num_epochs = 7
  with pytest.raises(ValueError, match="offline.num_epochs"):
    offline.run_offline(workdir, other, log=lambda s: None)


def test_bad_invocations_name_the_fix(run, tmp_path):
  with pytest.raises(UserError, match="config.json"):
    offline.run_offline(str(tmp_path))
  config = rundir.load_config(run[1])
  config.model.width = 8
  with pytest.raises(ValueError, match="change the network"):
    offline.run_offline(run[1], config)
  config = rundir.load_config(run[1])
  config.rlp.num_heads = 0
  with pytest.raises(ValueError, match="num_heads"):
    offline.run_offline(run[1], config)
