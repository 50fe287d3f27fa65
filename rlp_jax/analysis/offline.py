"""Offline heads on every analysis snapshot of a run (Fig. 2B): ``python -m rlp_jax.offline --workdir=DIR``.

For each snapshot (training/checkpointing.py; step 0, the initialization, always included) the frozen
network's features are extracted and fresh heads are fitted to them (training/offline_heads.py). One JSON line
per checkpoint goes to ``DIR/offline.jsonl`` as soon as that checkpoint is done, so a killed run resumes after
the last written step.
The settings used are kept beside it (``DIR/offline.config.json``); resuming with other settings is refused
instead of mixing two curves.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import jax
import numpy as np

from rlp_jax.heads import metrics
from rlp_jax.infra import configuration, rundir
from rlp_jax.infra.errors import UserError
from rlp_jax.training import checkpointing, offline_heads
from rlp_jax.training import experiment as experiment_lib

OFFLINE_FILE = rundir.OFFLINE_FILE


def offline_record(
  experiment, step: int, accuracy: Mapping[str, np.ndarray], online: Mapping | None, *, steps_per_epoch: int
) -> dict:
  """One line of offline.jsonl: the offline heads' metrics beside the online head's at the same step.

  The offline heads' are ``offline/<layer>/{accuracy,chance,chance_corrected,head_k/accuracy}``, the online
  head's ``online/<layer>/{accuracy,chance_corrected}`` (if logged).
  """
  rec: dict = {"step": int(step), "epoch": step / steps_per_epoch}
  rec.update(metrics.accuracy_metrics(accuracy, experiment.num_labels, prefix="offline"))
  for layer in accuracy:
    if online and f"rlp/{layer}/accuracy" in online:
      rec[f"online/{layer}/accuracy"] = online[f"rlp/{layer}/accuracy"]
      rec[f"online/{layer}/chance_corrected"] = online.get(f"rlp/{layer}/chance_corrected")
  return rec


def _check_settings(config, path: str) -> None:
  """The offline curve in ``path`` was computed with ``config`` (data_dir aside), or there is none yet."""
  settings = os.path.splitext(path)[0] + ".config.json"
  rundir.check_same(
    settings,
    config,
    ignore=("data_dir",),
    what=f"{settings} records other settings than this offline run; resuming would mix two curves",
    fix="Pass the saved values ({overrides}), or --output=<another file> for a new curve.",
  )
  if not os.path.exists(settings):
    rundir.write_config_file(settings, config)


def run_offline(
  workdir: str, config=None, *, output: str = OFFLINE_FILE, steps=None, log=print
) -> list[dict]:
  """Offline heads on every saved checkpoint of ``workdir`` (step 0 always included); returns all records.

  ``config`` defaults to the run's own; it may differ in the offline settings (``offline.*``), the head
  (``rlp.*``: layers, number of heads, hidden width, ...) or ``data_dir``, but not in the network: the
  checkpoints are restored with the run's own config. Steps already in ``DIR/<output>`` are skipped.
  """
  saved = rundir.load_config(workdir)
  config = saved if config is None else config
  configuration.validate(config)  # before offline.config.json is written
  reserved = (rundir.CONFIG_FILE, rundir.METRICS_FILE, rundir.SUMMARY_FILE)
  if os.sep in output or not output.endswith(".jsonl") or output in reserved:
    raise UserError(
      f"--output={output!r}: must be a new .jsonl file name inside the workdir (not {', '.join(reserved)}), "
      f"e.g. --output=offline_long.jsonl."
    )
  changed = [k for k in ("dataset", "model") if rundir.config_dict(saved[k]) != rundir.config_dict(config[k])]
  if changed:
    raise UserError(
      f"The config overrides change the network (config.{changed[0]}); offline heads read the saved "
      "network as it is. Drop those overrides."
    )
  if not (config.rlp.num_heads and config.rlp.layers):
    raise UserError(
      "config.rlp.num_heads is 0 or config.rlp.layers is empty: there is no head to train offline. "
      "Pass e.g. --config.rlp.num_heads=1 --config.rlp.layers=pre_logits."
    )
  path = os.path.join(workdir, output)
  is_writer = jax.process_index() == 0
  ckpt = checkpointing.Checkpoints(workdir, saved, read_only=True)
  kind, all_steps = ckpt.analysis_steps(heads=False)
  if 0 not in all_steps:
    raise UserError(f"{workdir}/{kind} has no step 0 (initialization), the offline control.")
  missing = sorted(set(steps or ()) - set(all_steps))
  if missing:
    raise UserError(f"--steps: no snapshot at {missing}; the saved steps are {all_steps}.")
  with rundir.lock(workdir, enabled=is_writer, name=f".{output}.lock", what=f"the same {output}"):
    return _run_offline(workdir, config, saved, ckpt, kind, all_steps, path, steps=steps, log=log)


def _run_offline(workdir, config, saved, ckpt, kind, all_steps, path, *, steps, log) -> list[dict]:
  """run_offline's work, while this process holds the output's lock."""
  is_writer = jax.process_index() == 0
  if is_writer:  # the first write, once every request is known to be valid
    _check_settings(config, path)
  todo = all_steps if steps is None else [s for s in all_steps if s in set(steps) | {0}]
  records = rundir.read_jsonl(path)  # a line cut short by a kill is skipped (and redone), never deleted
  done = {r["step"] for r in records}
  todo = [s for s in todo if s not in done]
  if not todo:
    return sorted(records, key=lambda r: r["step"])

  experiment, fresh = experiment_lib.build(config)
  if not rundir.differences(config, saved):
    run_exp, abstract = experiment, fresh
  else:  # restore with the run's own structure; read its data from where `config` says
    saved = saved.copy_and_resolve_references()
    saved.data_dir = config.data_dir
    run_exp, abstract = experiment_lib.build(saved)
  online = {r["step"]: r for r in rundir.read_jsonl(os.path.join(workdir, rundir.METRICS_FILE))}
  for step in todo:
    start = time.time()
    state = ckpt.restore_for_analysis(kind, step, abstract)
    # With offline.ridge_probe, the converged probe beside the budgeted heads (docs/design.md §4).
    controls = offline_heads.frozen_controls(
      experiment, state.params["model"], state.batch_stats, probe=config.offline.ridge_probe
    )
    rec = offline_record(
      experiment, step, controls["heads"], online.get(step), steps_per_epoch=run_exp.steps_per_epoch
    )
    if "probe" in controls:
      rec.update(metrics.accuracy_metrics(controls["probe"], experiment.num_labels, prefix="probe"))
    if is_writer:
      rundir.append_jsonl(path, rec)
    records.append(rec)
    summary = ", ".join(
      f"{k}={v:.4f}" for k, v in rec.items() if k.endswith("/accuracy") and "head_" not in k
    )
    log(f"offline step {step} (epoch {rec['epoch']:g}): {summary}  [{time.time() - start:.1f}s]")
  return sorted(records, key=lambda r: r["step"])
