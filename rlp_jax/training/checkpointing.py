"""Orbax checkpoints of a run, in two kinds (docs/design.md §5), and the guard against mixing experiments.

``WORKDIR/checkpoints/<step>``  **resume state**: the whole TrainState (parameters, optimizer moments, batch
    statistics, the epoch's loss sums). Written in the background while training continues (Orbax's async
    save: only the device-to-host copy blocks), at every ``checkpoint.every_epochs`` epochs, at the end
    and on preemption; only the last ``checkpoint.keep`` are kept.
``WORKDIR/snapshots/<step>``    **analysis snapshots**: the backbone's parameters and batch statistics (and
    the online heads with ``checkpoint.snapshot_heads``), never optimizer state — what offline heads
    (Fig. 2B) and per-example scores read. Step 0 (the initialization, the offline control) always, then
    every ``checkpoint.snapshot_every_epochs`` epochs and the last epoch; all are kept.

This is the split MaxText and big_vision make: a pod run keeps what it needs to continue and what the
analysis needs, not 91 copies of Adam's moments (``python -m rlp_jax.plan`` prints the storage).

A resume checkpoint that cannot be read (a truncated file, a missing manifest, an empty step directory) is
renamed ``<step>.unreadable`` with a warning, and the newest readable one is used: nothing is deleted, and
the renamed step no longer blocks the save of that step number when training gets there again.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from rlp_jax.infra import configuration, rundir
from rlp_jax.infra.errors import UserError

RESUME_DIR = "checkpoints"
SNAPSHOT_DIR = "snapshots"


def snapshot_of(state, *, heads: bool) -> dict[str, Any]:
  """The part of a TrainState an analysis snapshot holds: no optimizer state, no loss sums."""
  params = {"model": state.params["model"]}
  if heads:
    params["rlp"] = state.params["rlp"]
  return {"params": params, "batch_stats": state.batch_stats}


def snapshot_epochs(config: ml_collections.ConfigDict) -> list[int]:
  """Epochs after which a snapshot is written (0 = the initialization)."""
  every = config.checkpoint.snapshot_every_epochs
  epochs = set(range(every, config.num_epochs + 1, every)) if every > 0 else set()
  return sorted(epochs | {0, config.num_epochs})


def resume_epochs(config: ml_collections.ConfigDict) -> list[int]:
  """Epochs after which the resume state is written (besides preemption); the last ``keep`` survive."""
  every = config.checkpoint.every_epochs
  return sorted(set(range(every, config.num_epochs + 1, every)) | {config.num_epochs})


def _manager(path: epath.Path, *, keep: int | None, async_save: bool, read_only: bool = False):
  if read_only and not path.exists():
    return None  # nothing to read (e.g. a run from before snapshots existed); nothing is created
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=not read_only, read_only=read_only, enable_async_checkpointing=async_save
  )
  return ocp.CheckpointManager(path, options=options)


class Checkpoints:
  """The resume state and the analysis snapshots of one workdir."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, *, read_only: bool = False):
    self.root = epath.Path(workdir).absolute()
    ck = config.checkpoint
    self.heads_in_snapshots = bool(ck.snapshot_heads)
    async_save = bool(ck.async_save) and not read_only
    self._resume_manager = lambda: _manager(
      self.root / RESUME_DIR, keep=ck.keep, async_save=async_save, read_only=read_only
    )
    self.resume = self._resume_manager()
    self.snapshots = _manager(self.root / SNAPSHOT_DIR, keep=None, async_save=async_save, read_only=read_only)

  # -- writing ------------------------------------------------------------------------------------------

  def save_resume(self, step: int, state, *, wait: bool = False) -> None:
    """Starts writing the resume state of ``step``; returns once its arrays are copied off the devices.

    ``wait=True`` (preemption, the end of the run) returns only when the checkpoint is complete.
    """
    if step in self.resume.all_steps():  # preempted at an epoch's end: that state is already saved
      return
    self._one_in_flight(self.snapshots)
    self.resume.save(step, args=ocp.args.StandardSave(state), force=True)
    if wait:
      self.resume.wait_until_finished()

  def save_snapshot(self, step: int, state) -> None:
    if step in self.snapshots.all_steps():  # written before a restart; training repeats it exactly
      return
    snap = snapshot_of(state, heads=self.heads_in_snapshots)
    self._one_in_flight(self.resume)
    self.snapshots.save(step, args=ocp.args.StandardSave(snap), force=True)

  def _one_in_flight(self, other) -> None:
    """On several processes, one save at a time; a single process has no barriers and overlaps both.

    Orbax finishes an async save with barriers named from a per-process counter, and two managers finishing
    concurrently could reach them in different orders on different hosts and wait forever.
    """
    if jax.process_count() > 1 and other is not None:
      other.wait_until_finished()

  def wait(self) -> None:
    for mngr in (self.resume, self.snapshots):
      if mngr is not None:
        mngr.wait_until_finished()

  def close(self) -> None:
    """Waits for the saves in flight and releases the managers (once; later calls do nothing)."""
    for mngr in (self.resume, self.snapshots):
      if mngr is not None:
        mngr.wait_until_finished()
        mngr.close()
    self.resume = self.snapshots = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # -- reading ------------------------------------------------------------------------------------------

  def resume_steps(self) -> list[int]:
    return sorted(self.resume.all_steps()) if self.resume else []

  def snapshot_steps(self) -> list[int]:
    return sorted(self.snapshots.all_steps()) if self.snapshots else []

  def restore_latest(self, abstract_state) -> tuple[int | None, Any]:
    """``(step, state)`` of the newest readable resume checkpoint, or ``(None, abstract_state)``.

    Each unreadable newer one is renamed ``<step>.unreadable`` and named in a warning. When none can be
    read, nothing is renamed: every checkpoint failing at once says more about the config beside them (a
    config.json of another model or heads) than about the checkpoints, so the run is refused in one line.
    """
    steps = self.resume_steps()
    failed = []
    for step in reversed(steps):
      try:
        state = self.resume.restore(step, args=ocp.args.StandardRestore(abstract_state))
      except Exception as e:  # noqa: BLE001 - any failure to read means: try the one before
        failed.append((step, e))
        # A manager that failed once may keep the damaged step's handler state: start a fresh one.
        self.resume.close()
        self.resume = self._resume_manager()
        continue
      for bad, error in failed:
        self._set_aside(RESUME_DIR, bad, error)
      if failed:
        self.resume.close()
        self.resume = self._resume_manager()
      return step, state
    if failed:
      step, e = failed[0]
      raise UserError(
        f"none of the checkpoints in {self.root / RESUME_DIR} ({', '.join(str(s) for s, _ in failed)}) can "
        f"be read with this config (step {step}: {_why(e)}). If {rundir.CONFIG_FILE} was "
        f"replaced, restore the run's own (its copy: {rundir.CONFIG_BACKUP}); nothing was changed."
      )
    return None, abstract_state

  def analysis_steps(self, *, heads: bool) -> tuple[str, list[int]]:
    """``(kind, steps)`` that the analysis can read at: the snapshots, or the resume checkpoints left.

    The resume checkpoints that are left are used when the heads are needed and the snapshots were written
    without them.
    """
    if heads and not self.heads_in_snapshots:
      kind, steps = RESUME_DIR, self.resume_steps()
    else:
      kind, steps = SNAPSHOT_DIR, self.snapshot_steps()
    self._warn_unlisted(kind, steps)
    return kind, steps

  def _warn_unlisted(self, kind: str, steps: list[int]) -> None:
    """Skips, and says so, the step-named entries Orbax does not list.

    Such an entry is a broken or self-looping symlink, or a file. The analysis then covers fewer checkpoints
    than the directory seems to hold.
    """
    path = self.root / kind
    if not path.is_dir():
      return
    for entry in sorted(os.listdir(path)):
      if entry.isdigit() and int(entry) not in steps:
        warnings.warn(
          f"{path / entry} is not a readable checkpoint (a broken link or not a directory); skipped.",
          stacklevel=3,
        )

  def restore_for_analysis(self, kind: str, step: int, abstract_state):
    """A checkpoint the analysis reads; one that cannot be read is refused in one line naming it.

    Cannot be read: a damaged file, or a config.json beside it that describes another network or heads. A
    refused checkpoint is left as it is.
    """
    try:
      if kind == RESUME_DIR:
        return self.resume.restore(step, args=ocp.args.StandardRestore(abstract_state))
      return self.restore_snapshot(step, abstract_state)
    except Exception as e:  # noqa: BLE001 - Orbax, tensorstore and json raise many kinds; all mean "unreadable"
      raise UserError(
        f"{self.root / kind / str(step)} cannot be read ({_why(e)}): it is damaged, or the "
        f"{rundir.CONFIG_FILE} beside it describes another model or other heads than the run that wrote it. "
        "Nothing was changed; restore the file, or pass --steps without this one."
      ) from None

  def restore_snapshot(self, step: int, abstract_state):
    """The snapshot of ``step`` as a TrainState-like tree.

    ``abstract_state`` with params['model'] (and params['rlp'] where the snapshot has it) and batch_stats
    restored; the rest stays abstract.
    """
    target = snapshot_of(abstract_state, heads=self.heads_in_snapshots)
    snap = self.snapshots.restore(step, args=ocp.args.StandardRestore(target))
    params = dict(abstract_state.params, **snap["params"])
    return abstract_state.replace(params=params, batch_stats=snap["batch_stats"])

  def _set_aside(self, kind: str, step: int, error: Exception) -> None:
    src = self.root / kind / str(step)
    dst = self.root / kind / f"{step}.unreadable"
    if jax.process_index() == 0:
      n = 1
      while dst.exists():
        n += 1
        dst = self.root / kind / f"{step}.unreadable{n}"
      src.rename(dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"rlp_jax set aside checkpoint {step}")
    warnings.warn(
      f"{src} cannot be read ({_why(error)}); renamed to "
      f"{dst.name} (nothing deleted) and resuming from an earlier checkpoint.",
      stacklevel=3,
    )


def check_same_experiment(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a workdir whose saved config differs in any key that changes the experiment.

  Keys in ``configuration.RESUMABLE_KEYS`` (logging, mesh, checkpoint cadence, ...) may differ. A workdir
  that holds a run's checkpoints or log but no ``config.json`` is refused too: without it nothing says
  which experiment they are, and starting would describe them as this one (the copy ``.config.json``,
  written beside it, restores it).
  """
  config_path = os.path.join(workdir, rundir.CONFIG_FILE)
  if "://" not in workdir and not os.path.exists(config_path) and _holds_a_run(workdir):
    backup = os.path.join(workdir, rundir.CONFIG_BACKUP)
    restore = (
      f"restore it from its copy: cp {backup} {config_path}"
      if os.path.exists(backup)
      else "put back the config.json it was trained with"
    )
    raise UserError(
      f"--workdir={workdir} holds checkpoints or logs of a run but no {rundir.CONFIG_FILE}, which says what "
      f"experiment they are; {restore}, or use a new --workdir. Nothing in the workdir was changed."
    )
  rundir.check_same(
    os.path.join(workdir, rundir.CONFIG_FILE),
    config,
    ignore=configuration.RESUMABLE_KEYS,
    what=f"--workdir={workdir} holds a different experiment",
    fix="Use a new --workdir, or resume it with the saved values: {overrides}. Nothing in the workdir was "
    "changed.",
  )


def _holds_a_run(workdir: str) -> bool:
  """Checkpoints, snapshots or a metrics log: the traces of a run that trained here."""
  for sub in (RESUME_DIR, SNAPSHOT_DIR):
    path = os.path.join(workdir, sub)
    if os.path.isdir(path) and os.listdir(path):
      return True
  metrics = os.path.join(workdir, rundir.METRICS_FILE)
  return os.path.exists(metrics) and os.path.getsize(metrics) > 0


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """``config.json`` and its copy ``.config.json`` (what restores it if it is lost, check_same_experiment)."""
  rundir.write_config_file(os.path.join(workdir, rundir.CONFIG_FILE), config)
  rundir.write_config_file(os.path.join(workdir, rundir.CONFIG_BACKUP), config)


def _why(error: BaseException) -> str:
  """'Type: first line of the message' (at most 200 characters of it): Orbax's messages run on."""
  return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
