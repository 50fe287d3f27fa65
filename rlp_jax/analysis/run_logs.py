"""The logs of finished (or running) runs, as the report reads them (docs/design.md §6).

One ``RunLogs`` per run directory, found from run directories or sweep roots, and what a set of runs varied.

Reads ``metrics.jsonl``, ``config.json`` and, where present, ``offline.jsonl`` (``python -m rlp_jax.offline``)
and ``memorization.json`` (``python -m rlp_jax.memorization``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from collections.abc import Sequence

import numpy as np

from rlp_jax.infra import configuration, rundir
from rlp_jax.infra.errors import UserError

LAMBDA = "rlp.reg_lambda"
SHORT_NAMES = {LAMBDA: "λ", "rlp.num_labels": "n", "rlp.num_heads": "heads"}
# Classes of the datasets the configs use: the logs do not record it, and asking tfds would load TensorFlow
# for one number. The class-chance line of a figure is drawn only when the dataset is listed here.
NUM_CLASSES = {
  "digits": 10,
  "mnist": 10,
  "mnist1d": 10,
  "fashion_mnist": 10,
  "cifar10": 10,
  "svhn_cropped": 10,
}
NUM_CLASSES |= {"cifar100": 100, "imagenet2012": 1000, "imagenet_v2": 1000}


@dataclasses.dataclass
class RunLogs:
  """What the figures need of one run."""

  workdir: str
  name: str
  config: dict  # flattened config.json ({} if absent)
  metrics: list[dict]  # metrics.jsonl, one record per evaluation
  offline: list[dict]  # offline.jsonl (may be empty)
  memorization: dict | None = None  # memorization.json
  skipped: list[str] = dataclasses.field(default_factory=list)  # lines of the logs that were not JSON
  # The end-of-run table's controls by layer (summary.json; mean over heads): offline_at_init, probe_at_init,
  # probe_trained, each present when the run computed it.
  controls: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

  @classmethod
  def load(cls, workdir: str, name: str | None = None) -> RunLogs:
    config_path = os.path.join(workdir, rundir.CONFIG_FILE)
    config = (
      configuration.flatten(rundir.migrate(rundir.read_json(config_path)))
      if os.path.exists(config_path)
      else {}
    )
    mem_path = os.path.join(workdir, "memorization.json")
    mem = rundir.read_json(mem_path) if os.path.exists(mem_path) else None
    # read_jsonl skips a damaged line with a warning (the records after it still count, docs/design.md §6);
    # the warnings are kept too, so that the report can say which lines its figures lack.
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      metrics = rundir.read_jsonl(os.path.join(workdir, rundir.METRICS_FILE))
      offline = sorted(rundir.read_jsonl(os.path.join(workdir, rundir.OFFLINE_FILE)), key=lambda r: r["step"])
    skipped = [str(w.message) for w in caught]
    controls = {}
    summary_path = os.path.join(workdir, rundir.SUMMARY_FILE)
    if os.path.exists(summary_path):
      try:
        controls = _controls(rundir.read_json(summary_path))
      except UserError as e:  # the figures do not need it: say so, draw the rest
        warnings.warn(f"{e} Its controls are left out of the report.", stacklevel=2)
    for message in skipped:
      warnings.warn(message, stacklevel=2)
    return cls(
      workdir=workdir,
      name=name or os.path.basename(os.path.normpath(workdir)),
      config=config,
      metrics=metrics,
      offline=offline,
      memorization=mem,
      skipped=skipped,
      controls=controls,
    )

  def series(self, key: str, records: Sequence[dict] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of ``key`` over the records that have it."""
    rows = [r for r in (self.metrics if records is None else records) if key in r and r[key] is not None]
    return np.array([r["epoch"] for r in rows], float), np.array([r[key] for r in rows], float)

  def layers(self, prefix: str = "rlp", suffix: str = "accuracy") -> list[str]:
    """Layers with ``<prefix>/<layer>/<suffix>`` in the log, in the model's order (the order logged)."""
    out: dict[str, None] = {}
    for r in self.metrics + self.offline:
      for k in r:
        m = re.fullmatch(rf"{prefix}/([^/]+)/{suffix}", k)
        if m:
          out[m.group(1)] = None
    return list(out)

  @property
  def final(self) -> dict:
    """The record of the run's last epoch (rundir.final_record); {} while the run is unfinished."""
    if "num_epochs" not in self.config:  # no config.json: take the log as complete
      return self.metrics[-1] if self.metrics else {}
    return rundir.final_record(self.metrics, self.config["num_epochs"]) or {}

  def chance(self, layer: str) -> float | None:
    for r in self.metrics + self.offline:
      for key in (f"rlp/{layer}/chance", f"offline/{layer}/chance"):
        if key in r:
          return r[key]
    n = self.config.get("rlp.num_labels")
    return 1.0 / n if n else None

  @property
  def class_chance(self) -> float | None:
    """1 / number of classes, where the dataset is one NUM_CLASSES knows."""
    classes = NUM_CLASSES.get(str(self.config.get("dataset", "")).split("/")[0].split(":")[0])
    return 1.0 / classes if classes else None


CONTROLS = ("offline_at_init", "probe_at_init", "probe_trained")


def _controls(summary: dict) -> dict[str, dict[str, float]]:
  """summary.json's per-head controls as {layer: {control: mean over the layer's heads}}."""
  by_layer: dict[str, dict[str, list[float]]] = {}
  for row in summary.get("rlp_heads", []) if isinstance(summary, dict) else []:
    for name in CONTROLS:
      value = row.get(f"{name}_accuracy")
      if value is not None:
        by_layer.setdefault(row["layer"], {}).setdefault(name, []).append(float(value))
  return {layer: {k: float(np.mean(v)) for k, v in c.items()} for layer, c in by_layer.items()}


def find_runs(paths: Sequence[str]) -> list[RunLogs]:
  """Run directories from the arguments: a run itself, or a sweep root whose subdirectories are runs."""
  runs = []
  for path in paths:
    if os.path.exists(os.path.join(path, "metrics.jsonl")):
      runs.append(RunLogs.load(path))
      continue
    subs = (
      sorted(d for d in os.listdir(path) if os.path.exists(os.path.join(path, d, "metrics.jsonl")))
      if os.path.isdir(path)
      else []
    )
    if not subs:
      raise UserError(
        f"--workdir={path}: no metrics.jsonl there nor in its subdirectories; give a run's directory or a "
        "sweep root."
      )
    runs.extend(RunLogs.load(os.path.join(path, d)) for d in subs)
  return runs


def differing_keys(runs: Sequence[RunLogs]) -> list[str]:
  """Config keys whose values differ between the runs (what a sweep varied), λ first."""
  keys = sorted({k for r in runs for k in r.config} - set(configuration.RESUMABLE_KEYS))
  diff = [k for k in keys if len({json.dumps(r.config.get(k)) for r in runs}) > 1]
  return sorted(diff, key=lambda k: (k != LAMBDA, k))


def fmt_value(v) -> str:
  """A config value for a label or table cell: floats in short form (1e+04, 0.01, 0)."""
  if isinstance(v, float):
    return "0" if v == 0 else format(v, "g")
  return str(v)


def run_label(run: RunLogs, keys: Sequence[str]) -> str:
  return ", ".join(f"{SHORT_NAMES.get(k, k)}={fmt_value(run.config.get(k))}" for k in keys) or run.name


def setting(runs: Sequence[RunLogs], *, with_n: bool = True) -> str:
  """What the runs share, for a figure's title: dataset, model, λ and n where they agree.

  ``with_n=False`` leaves n out (a figure of class probes: the random labels do not enter it).

  E.g. 'digits, cnn, λ=0, n=200'; the run's directory name only when there is no config.json to tell.
  """
  if not any(r.config for r in runs):
    return ", ".join(r.name for r in runs)
  parts = []
  for key in ("dataset", "model.name", LAMBDA, *(("rlp.num_labels",) if with_n else ())):
    values = {json.dumps(r.config.get(key)) for r in runs}
    if len(values) == 1 and runs[0].config.get(key) is not None:
      if key == "rlp.num_labels" and runs[0].config.get("rlp.label_mode") == "unique":
        parts.append("one label per example")  # n = m; the configured n is not used
        continue
      value = fmt_value(runs[0].config[key])
      parts.append(f"{SHORT_NAMES[key]}={value}" if key in SHORT_NAMES else value)
  return ", ".join(parts)
