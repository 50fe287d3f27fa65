"""Orbax checkpoints of the train state, and the guard against mixing experiments in one workdir."""

from __future__ import annotations

import os

import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from rlp_jax.infra import configuration, rundir


def manager(workdir: str) -> ocp.CheckpointManager:
  """Keeps every checkpoint: offline heads (Fig. 2B) are trained on each saved epoch, step 0 included."""
  options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(epath.Path(workdir).absolute() / "checkpoints", options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, *, force: bool = False) -> None:
  mngr.save(step, args=ocp.args.StandardSave(state), force=force)
  mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state):
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))


def check_same_experiment(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a workdir whose saved config differs in any key that changes the experiment.

  Keys in ``configuration.RESUMABLE_KEYS`` (logging, mesh, batch size of evaluation, ...) may differ.
  """
  rundir.check_same(
    os.path.join(workdir, rundir.CONFIG_FILE),
    config,
    ignore=configuration.RESUMABLE_KEYS,
    what=f"--workdir={workdir} holds a different experiment",
    fix="Use a new --workdir, or pass the saved values to resume it. Nothing in the workdir was changed.",
  )


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  rundir.write_config_file(os.path.join(workdir, rundir.CONFIG_FILE), config)
