"""Orbax checkpoints of the train state, and the guard against mixing experiments in one workdir."""

from __future__ import annotations

import json
import os

import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from rlp_jax import configuration

CONFIG_FILE = "config.json"


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

  Resuming a run with, say, another λ would silently splice two experiments into one curve; the user
  either meant a new workdir or made a typo. Keys in ``configuration.RESUMABLE_KEYS`` may differ.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = {}
    try:
      saved_cfg = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(
        f"{path} is not valid JSON ({e}); it is the config of the run in that workdir. "
        "Restore it, or use a new --workdir."
      ) from None
    saved = configuration.flatten(saved_cfg)
  current = configuration.flatten(json.loads(config.to_json()))
  diffs = [
    k
    for k in sorted(set(saved) | set(current))
    if k not in configuration.RESUMABLE_KEYS and saved.get(k) != current.get(k)
  ]
  if diffs:
    detail = ", ".join(f"config.{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}" for k in diffs[:8])
    raise ValueError(
      f"--workdir={workdir} holds a different experiment ({detail}). Use a new --workdir, "
      "or pass the saved values to resume it. Nothing in the workdir was changed."
    )


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(config.to_json(indent=2))
  os.replace(tmp, path)
