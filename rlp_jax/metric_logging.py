"""Metric writers: TensorBoard event files + log (clu), and ``WORKDIR/metrics.jsonl`` for plots."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from clu import metric_writers


class JsonlWriter(metric_writers.MetricWriter):
  """Appends one JSON object per ``write_scalars`` call: ``{"step": s, <name>: value, ...}``.

  A flat, line-oriented file is what report/plot code and a quick ``jq`` want; it survives
  restarts by appending, and a resumed run first drops lines past its restored step (``truncate_after``).
  """

  def __init__(self, path: str):
    self._path = path

  def truncate_after(self, step: int) -> None:
    """Drops records with a step > ``step``: they belong to the part of the run that is redone."""
    if not os.path.exists(self._path):
      return
    with open(self._path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(self._path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(self._path + ".tmp", self._path)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {"step": int(step)}
    record.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    with open(self._path, "a") as f:
      f.write(json.dumps(record) + "\n")

  # Non-scalar data goes to TensorBoard only.
  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def read_jsonl(path: str) -> list[dict]:
  """Records of a JSONL file; a truncated last line (a run killed while writing it) ends the list."""
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      if line.strip():
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError:
          break
  return out


def create_writers(
  workdir: str,
) -> tuple[metric_writers.MetricWriter, metric_writers.MetricWriter, JsonlWriter | None]:
  """(eval-metrics writer, progress writer, the JSONL writer).

  Evaluation records go to TensorBoard, the log and ``metrics.jsonl``; progress scalars (steps/s,
  uptime) only to TensorBoard and the log, so the JSONL file holds exactly one record per evaluation.
  Only host 0 writes files; other hosts log to the console.
  """
  if jax.process_index() != 0:
    console = metric_writers.create_default_writer(workdir, just_logging=True)
    return console, console, None
  jsonl = JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
  tb = metric_writers.create_default_writer(workdir, asynchronous=False)
  return metric_writers.MultiWriter([tb, jsonl]), tb, jsonl
