"""Issue 23's bad days: a run directory that lost its config, two writers of one analysis file, damaged
files read by the tools. Each ends in one user error naming the file, and nothing in the workdir is lost."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from rlp_jax.analysis import offline, scores
from rlp_jax.infra import rundir
from rlp_jax.infra.errors import UserError
from rlp_jax.training import checkpointing


@pytest.fixture
def run(analysis_run, tmp_path):
  config, workdir = analysis_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  return config, str(copy)


def _listing(path) -> dict[str, bytes]:
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, path)] = f.read()
  return out


def test_a_run_without_its_config_is_refused_and_says_how_to_restore_it(run):
  """config.json deleted from a trained run: starting there with another λ would have resumed its
  checkpoints as a different experiment. It is refused, naming the copy that restores it, and the
  directory is left as it was; after the copy is put back, the original config resumes."""
  config, workdir = run
  os.remove(os.path.join(workdir, rundir.CONFIG_FILE))
  before = _listing(workdir)
  other = config.copy_and_resolve_references()
  other.rlp.reg_lambda = 5.0
  with pytest.raises(UserError, match=r"no config\.json.*cp .*\.config\.json .*config\.json") as err:
    checkpointing.check_same_experiment(other, workdir)
  assert "Nothing in the workdir was changed" in str(err.value)
  assert _listing(workdir) == before
  shutil.copy(os.path.join(workdir, rundir.CONFIG_BACKUP), os.path.join(workdir, rundir.CONFIG_FILE))
  checkpointing.check_same_experiment(config, workdir)  # the saved experiment: accepted
  with pytest.raises(UserError, match="holds a different experiment"):
    checkpointing.check_same_experiment(other, workdir)


def test_a_second_offline_writer_is_refused(run):
  """Two offline commands on one run would append to the same offline.jsonl; the second is refused."""
  _, workdir = run
  with rundir.lock(workdir, name=".offline.jsonl.lock"):
    with pytest.raises(UserError, match="in use by process .* the same offline.jsonl"):
      offline.run_offline(workdir, log=lambda s: None)
  assert not os.path.exists(os.path.join(workdir, offline.OFFLINE_FILE))


def test_damaged_files_are_named_in_one_error(run, tmp_path):
  config, workdir = run
  # A config.json section of the wrong type.
  bad = rundir.config_dict(config)
  bad["rlp"] = ["not", "a", "section"]
  rundir.atomic_write(str(tmp_path / "config.json"), json.dumps(bad))
  with pytest.raises(UserError, match="does not hold a config of this project"):
    rundir.read_config(str(tmp_path / "config.json"))
  # A scores file that is not a zip.
  (tmp_path / "memorization.npz").write_bytes(b"PK\x03\x04 garbage")
  with pytest.raises(UserError, match="memorization.npz cannot be read"):
    scores.load(str(tmp_path / "memorization.npz"))
  # Invalid UTF-8 in a log: skipped with a warning, the lines around it kept, the file untouched.
  log = os.path.join(workdir, rundir.METRICS_FILE)
  with open(log, "rb") as f:
    original = f.read()
  with open(log, "ab") as f:
    f.write(b"\xff\xfe\x00 binary garbage\n")
  with pytest.warns(UserWarning, match="not a complete JSON record"):
    records = rundir.read_jsonl(log)
  assert len(records) == original.count(b"\n")
  with open(log, "rb") as f:
    assert f.read() == original + b"\xff\xfe\x00 binary garbage\n"
  # An analysis snapshot whose metadata is empty is still read (Orbax does not need it); one whose array
  # files are cut to nothing is refused naming it, and nothing is renamed or deleted.
  from rlp_jax.training import experiment

  _, state = experiment.build(config)
  ckpt = checkpointing.Checkpoints(workdir, config, read_only=True)
  kind, steps = ckpt.analysis_steps(heads=False)
  step_dir = os.path.join(workdir, kind, str(steps[-1]))
  open(os.path.join(step_dir, "_CHECKPOINT_METADATA"), "w").close()
  ckpt.restore_for_analysis(kind, steps[-1], state)
  for root, _, files in os.walk(step_dir):
    for name in files:
      if name != "_CHECKPOINT_METADATA":
        open(os.path.join(root, name), "w").close()
  before = _listing(workdir)
  with pytest.raises(UserError, match=rf"{kind}/{steps[-1]} cannot be read"):
    checkpointing.Checkpoints(workdir, config, read_only=True).restore_for_analysis(kind, steps[-1], state)
  assert _listing(workdir) == before


def test_a_snapshot_that_is_a_symlink_loop_is_skipped_with_a_warning(run):
  config, workdir = run
  loop = os.path.join(workdir, checkpointing.SNAPSHOT_DIR, "999")
  os.symlink(loop, loop)
  with pytest.warns(UserWarning, match=r"snapshots/999 is not a readable checkpoint"):
    kind, steps = checkpointing.Checkpoints(workdir, config, read_only=True).analysis_steps(heads=False)
  assert kind == checkpointing.SNAPSHOT_DIR and 999 not in steps and steps


def test_when_no_resume_checkpoint_can_be_read_nothing_is_renamed(run):
  """Every resume checkpoint failing (as with a config.json of another model beside them) is refused in one
  line naming them; none is set aside as '.unreadable', unlike one damaged checkpoint among good ones."""
  from rlp_jax.training import experiment

  config, workdir = run
  root = os.path.join(workdir, checkpointing.RESUME_DIR)
  for dirpath, _, files in os.walk(root):
    for name in files:
      if name != "_CHECKPOINT_METADATA":
        open(os.path.join(dirpath, name), "w").close()
  before = _listing(workdir)
  _, state = experiment.build(config)
  with checkpointing.Checkpoints(workdir, config) as ckpt:
    with pytest.raises(UserError, match=r"none of the checkpoints in .*checkpoints .* can be read"):
      ckpt.restore_latest(state)
  assert _listing(workdir) == before
