"""Metric writers: TensorBoard event files + log (clu), and ``WORKDIR/metrics.jsonl`` for plots."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from clu import metric_writers

from rlp_jax.infra import rundir


class JsonlWriter(metric_writers.MetricWriter):
  """Appends one JSON object per ``write_scalars`` call: ``{"step": s, <name>: value, ...}``.

  A flat, line-oriented file is what report/plot code and a quick ``jq`` want; it survives
  restarts by appending, and a resumed run first drops lines past its restored step (``truncate_after``).
  """

  def __init__(self, path: str):
    self._path = path

  def truncate_after(self, step: int) -> None:
    """Drops records with a step > ``step``: they belong to the part of the run that is redone."""
    dropped = rundir.drop_records_after(self._path, step)
    if dropped:
      logging.warning(
        "%s: %d records past step %d dropped; that part of the run is redone.", self._path, dropped, step
      )

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {"step": int(step)}
    record.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    rundir.append_jsonl(self._path, record)

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


def create_writers(
  workdir: str,
) -> tuple[metric_writers.MetricWriter, metric_writers.MetricWriter, JsonlWriter | None]:
  """(eval-metrics writer, progress writer, the JSONL writer).

  Evaluation records go to TensorBoard and ``metrics.jsonl``; progress scalars (steps/s, uptime) only to
  TensorBoard, so the JSONL file holds exactly one record per evaluation. Only host 0 writes; the loop
  logs a short line per epoch on every host.
  """
  if jax.process_index() != 0:
    nothing = metric_writers.MultiWriter([])
    return nothing, nothing, None
  jsonl = JsonlWriter(os.path.join(workdir, rundir.METRICS_FILE))
  # No clu LoggingWriter: the loop logs one short line per epoch; the full record is in metrics.jsonl.
  tb = metric_writers.SummaryWriter(workdir)
  return metric_writers.MultiWriter([tb, jsonl]), tb, jsonl
