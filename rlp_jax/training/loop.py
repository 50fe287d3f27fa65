"""The training loop: ``train_and_evaluate(config, workdir)``, with resumption, preemption and NaN checks."""

from __future__ import annotations

import errno
import functools
import os
import signal
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from rlp_jax.data import input_pipeline
from rlp_jax.infra import configuration, console, rundir
from rlp_jax.infra.errors import UserError
from rlp_jax.training import checkpointing, health, offline_heads, summary
from rlp_jax.training.evaluators import Evaluator
from rlp_jax.training.experiment import build, device_batches, zero_sums
from rlp_jax.training.steps import make_train_step


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each step, so it can checkpoint and exit cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() > 1:
      # jax.distributed.initialize installed the handler that reports SIGTERM to the coordination service
      # (which feeds the preemption sync point below); a Python handler would replace it.
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread (e.g. some test runners): no handler, no harm
      self._previous = None
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self.requested = True

  def stop_now(self, step: int) -> bool:
    """Whether to checkpoint and exit after ``step``.

    On several hosts all must stop at the same step (a host leaving alone would deadlock the others'
    collectives), so JAX's preemption sync point — fed by the coordination service, which sees SIGTERM on any
    host — decides there.
    """
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss diverged: the settings need changing, so it is reported like a bad config value."""


def _check_finite(sums: Mapping[str, jax.Array], step: int, last_saved: int | None, workdir: str) -> None:
  total = float(sums["loss/total"])
  if not np.isfinite(total):
    raise NonFiniteLossError(
      f"The training loss became {total} by step {step}. Training stopped; the last good checkpoint "
      f"(step {last_saved}) in {workdir}/checkpoints is intact and nothing after it was saved. Lower "
      "config.optimizer.learning_rate, set config.optimizer.grad_clip_norm, or lower config.rlp.reg_lambda, "
      "in a new --workdir (this one keeps the diverged run's settings)."
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in ``workdir``; returns the final metrics and the summary table rows."""
  configuration.validate(config)
  rundir.check_workdir(workdir)
  checkpointing.check_same_experiment(config, workdir)
  is_writer = jax.process_index() == 0
  if is_writer and os.path.isdir(workdir):
    with rundir.lock(workdir):  # a workdir in use is refused before the state takes device memory
      pass
  experiment, state = build(
    config
  )  # checks the config against the data and the model: before the workdir exists
  with (
    rundir.lock(workdir, enabled=is_writer),
    console.log_file(rundir.log_path(workdir, "train"), enabled=is_writer),
  ):
    try:
      checkpointing.write_config(config, workdir)
      with checkpointing.Checkpoints(workdir, config) as ckpt:  # closing waits for the saves in flight
        return _run(config, workdir, experiment, state, ckpt)
    except OSError as e:
      if e.errno not in (errno.ENOSPC, errno.EDQUOT):
        raise
      # Orbax writes each step under a temporary name and renames it only when complete, so the steps
      # already saved are whole; the one cut short keeps its temporary name and is never resumed from.
      resume_dir = os.path.join(workdir, checkpointing.RESUME_DIR)  # absent if the disk filled before it
      names = os.listdir(resume_dir) if os.path.isdir(resume_dir) else []
      saved = sorted(int(p) for p in names if p.isdigit())
      raise UserError(
        f"--workdir={workdir}: the disk is full ({e.strerror}). "
        + (f"The checkpoint of step {saved[-1]} is intact: " if saved else "")
        + "free space and run the same command again to resume."
      ) from None


def _run(config, workdir: str, experiment, state, ckpt: checkpointing.Checkpoints) -> dict[str, Any]:
  # Imported here, not at the top: clu's writers pull in TensorFlow, which the train *step* (and so the
  # benchmark on an accelerator machine that has only JAX) does not need.
  from clu import periodic_actions

  from rlp_jax.training import metric_logging

  latest, state = ckpt.restore_latest(state)
  if latest is None:
    _refuse_logs_without_checkpoints(workdir)
    latest = 0
    ckpt.save_resume(0, state)
    ckpt.save_snapshot(0, state)  # the initialization: the offline control of Fig. 2B
  else:
    logging.info("Resumed from step %d of %d.", latest, experiment.total_steps)
  writer, progress_writer, jsonl = metric_logging.create_writers(workdir)
  if jsonl is not None:
    jsonl.truncate_after(latest)  # records past the restored step belong to the part that is redone

  train_step, evaluate = make_train_step(experiment), Evaluator(experiment)
  spe = experiment.steps_per_epoch
  step = int(state.step)
  resume_at = set(checkpointing.resume_epochs(config))
  snapshot_at = set(checkpointing.snapshot_epochs(config))
  progress = periodic_actions.ReportProgress(  # steps/s and uptime to TensorBoard
    num_train_steps=experiment.total_steps, writer=progress_writer, every_steps=config.log_every_steps
  )
  progress_line = console.ProgressLine(experiment.total_steps, config.log_every_steps)  # on a terminal
  last_eval: dict[str, float] = {}
  collapsed: dict[str, Any] | None = None  # the first evaluation at which training had collapsed (health.py)
  check_health = functools.partial(
    health.collapse,
    num_classes=experiment.info.num_classes,
    reg_lambda=config.rlp.reg_lambda,
    warmup_epochs=config.optimizer.warmup_epochs,
  )
  with _Preemption() as preemption:
    for epoch in range(step // spe, config.num_epochs):
      if step == epoch * spe:
        state = state.replace(
          loss_sums=jax.device_put(zero_sums(experiment), experiment.state_sharding.loss_sums)
        )
      batches = input_pipeline.train_batches(config, experiment.info, epoch, skip=step - epoch * spe)
      for batch in device_batches(experiment, batches):
        state = train_step(state, batch)
        step += 1
        progress(step, time.time())
        progress_line(step)
        if step % config.log_every_steps == 0:
          _check_finite(state.loss_sums, step, latest, workdir)
        if preemption.stop_now(step):
          _check_finite(state.loss_sums, step, latest, workdir)
          ckpt.save_resume(step, state, wait=True)
          writer.flush()
          raise SystemExit(f"Preempted: checkpoint saved at step {step}; re-run the same command to resume.")
      _check_finite(state.loss_sums, step, latest, workdir)
      done = epoch + 1
      if done % config.eval.every_epochs == 0 or done == config.num_epochs:
        metrics = {
          "epoch": done,
          **{k: float(v) / spe for k, v in state.loss_sums.items()},
          **evaluate(state.params, state.batch_stats, epoch),
        }
        writer.write_scalars(step, metrics)
        writer.flush()
        last_eval = metrics
        progress_line.clear()
        logging.info("epoch %d: %s", done, _short(metrics))
        warning = check_health(metrics)
        if warning and collapsed is None:  # said once, when first seen; the summary repeats it
          logging.warning("WARNING: %s", warning)  # the console shows no level: the line says it
          collapsed = {"epoch": done, "message": warning}
      # Both saves only start here: the writes proceed while the next epoch trains.
      if done in snapshot_at:
        ckpt.save_snapshot(step, state)
      if done in resume_at:
        ckpt.save_resume(step, state)
        latest = step
  ckpt.wait()
  if not last_eval:  # the run had already finished: report its final evaluation again
    last_eval = {
      "epoch": config.num_epochs,
      **evaluate(state.params, state.batch_stats, config.num_epochs - 1),
    }
  writer.close()

  final_warning = check_health(last_eval)
  if final_warning and collapsed is None:  # a resumed run that had collapsed before the restart
    logging.warning("WARNING: %s", final_warning)
    collapsed = {"epoch": int(last_eval["epoch"]), "message": final_warning}
  if collapsed:
    collapsed["at_end"] = bool(final_warning)  # False: it had collapsed, then recovered

  controls = {}
  if config.offline.at_init and experiment.rlp_layers:
    init = ckpt.restore_snapshot(0, state)
    controls = offline_heads.init_controls(
      experiment, init.params["model"], init.batch_stats, scale_free=config.offline.at_init_scale_free
    )
  if config.offline.ridge_probe and experiment.rlp_layers:
    # The converged probe on the trained network, beside its value at init (docs/design.md §4).
    controls["probe_trained"] = offline_heads.frozen_probe(
      experiment, state.params["model"], state.batch_stats
    )
  head_rows = summary.rows(last_eval, controls, experiment.num_labels, experiment.rlp_layers)
  if jax.process_index() == 0:
    summary.write(workdir, last_eval, head_rows, collapsed)
  return {
    "metrics": last_eval,
    "offline_at_init": controls.get("offline_at_init", {}),
    "offline_at_init_scale_free": controls.get("offline_at_init_scale_free", {}),
    "probe_at_init": controls.get("probe_at_init", {}),
    "probe_trained": controls.get("probe_trained", {}),
    "rlp_heads": head_rows,
    "collapse": collapsed,
    "table": summary.format_table(last_eval, head_rows),
    "experiment": experiment,
    "state": state,
  }


def _refuse_logs_without_checkpoints(workdir: str) -> None:
  """Refuses a fresh start in a workdir whose log records training: its checkpoints were lost.

  Starting over would overwrite that log with a new run's, so it is refused and nothing is changed.
  """
  records = rundir.read_jsonl(os.path.join(workdir, rundir.METRICS_FILE))
  if records:
    last = max(r.get("step", 0) for r in records)
    raise UserError(
      f"--workdir={workdir}: {rundir.METRICS_FILE} records training up to step {last}, but "
      f"{checkpointing.RESUME_DIR}/ holds no readable checkpoint to continue from. Restore the checkpoints, "
      "or use a new --workdir to train again. Nothing in the workdir was changed."
    )


def _short(metrics: Mapping[str, float]) -> str:
  keys = [
    k
    for k in metrics
    if k in ("train/accuracy", "test/accuracy", "loss/total")
    or (k.startswith("rlp/") and k.endswith("/accuracy") and "/head_" not in k)
  ]
  return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys)
