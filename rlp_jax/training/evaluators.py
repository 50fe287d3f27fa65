"""Evaluators: what is measured on a set of examples, from one feature-extraction path (docs/design.md §4).

``Features(experiment)`` is the one jitted function that applies the network in eval mode to a batch of
images and returns its class logits and the pooled float32 features of the layers the heads and probes
read. Every measurement reads those arrays:

  ``evaluate``            class accuracy and loss (train subset, test), random-label accuracy per head,
                          class-probe accuracy per layer — inside the training loop, after every epoch;
  ``offline_heads``       fresh heads trained on the frozen features (training/offline_heads.py);
  ``head_logits``         the online heads' logits per example (analysis/memorization.py's scores).

As in big_vision's ``config.evals``, an evaluator only needs parameters and data: it runs on the live train
state in the loop or on any saved checkpoint (analysis/), and gives the same numbers on both.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlp_jax import models
from rlp_jax.data import input_pipeline, labels
from rlp_jax.heads import heads as heads_lib
from rlp_jax.heads import metrics as head_metrics
from rlp_jax.heads import routing
from rlp_jax.training.experiment import Experiment, device_batch


class Features:
  """``features(model_params, batch_stats, image) -> (class logits, {layer: (B, D) float32})`` in eval mode.

  ``layers`` default to every layer an RLP head or a probe reads. The pooling is the heads' own
  (``experiment.pool``, from ``config.rlp.pool``), so a head applied to these features sees what it sees in
  training.
  """

  def __init__(self, experiment: Experiment, layers: Sequence[str] | None = None):
    self.experiment = experiment
    self.layers = tuple(
      layers if layers is not None else dict.fromkeys(experiment.rlp_layers + experiment.probe_layers)
    )
    pool = experiment.pool

    @jax.jit
    def features(model_params, batch_stats, image):
      logits, sown, _ = models.apply(experiment.model_def, model_params, batch_stats, image, train=False)
      pooled = {k: heads_lib.pool_features(sown[k], pool).astype(jnp.float32) for k in self.layers}
      return logits.astype(jnp.float32), pooled

    self.fn = features

  def __call__(self, model_params, batch_stats, image):
    return self.fn(model_params, batch_stats, image)

  def batches(
    self, params, batch_stats, split: str, epoch: int, *, limit: int = -1
  ) -> Iterator[tuple[dict, dict, jax.Array, dict]]:
    """``(host batch, device batch, class logits, features)`` for every eval batch of ``split``."""
    cfg = self.experiment.config
    for batch in input_pipeline.eval_batches(cfg, self.experiment.info, split, epoch, limit=limit):
      on_device = device_batch(self.experiment, batch)
      logits, feats = self(params["model"], batch_stats, on_device.pop("image"))
      yield batch, on_device, logits, feats


# ----------------------------------------------------------------------------------------------------
# Class, random-label and probe accuracy (the per-epoch evaluation of the loop)
# ----------------------------------------------------------------------------------------------------


def _metric_sums(experiment: Experiment, params, logits, feats, batch) -> dict[str, jax.Array]:
  """Sums over the real (``mask``) examples of one batch.

  Count, class correct and loss, and per layer the random-label correct counts (H,) and probe correct
  counts.
  """
  mask = batch["mask"]
  out = {
    "count": mask.sum(),
    "class_correct": ((jnp.argmax(logits, -1) == batch["label"]) & mask).sum(),
    "class_loss": (routing.cross_entropy(logits, batch["label"]) * mask).sum(),
  }
  if experiment.heads_def is not None and "rlp_labels" in batch:
    heads = nnx.merge(experiment.heads_def, params["rlp"])
    for name in experiment.rlp_layers:
      head = heads.layers[name]
      st = routing.parallel_head_stats(
        head,
        head.standardize(feats[name]),
        batch["rlp_labels"],
        mesh=experiment.mesh,
        label_chunk=experiment.config.rlp.label_chunk,
      )
      out[f"rlp/{name}"] = (st.correct & mask[:, None]).sum(0)
  if experiment.probes_def is not None:
    probes = nnx.merge(experiment.probes_def, params["probes"])
    for name, s in probes({k: feats[k] for k in experiment.probe_layers}).items():
      out[f"probe/{name}"] = ((jnp.argmax(s[:, 0], -1) == batch["label"]) & mask).sum()
  return out


class Evaluator:
  """The loop's per-epoch evaluation; built once per experiment so its functions compile once."""

  def __init__(self, experiment: Experiment):
    self.experiment = experiment
    self.features = Features(experiment)
    self.sums = jax.jit(
      lambda params, logits, feats, batch: _metric_sums(experiment, params, logits, feats, batch)
    )

  def __call__(self, params, batch_stats, epoch: int) -> dict[str, float]:
    """Class accuracy and loss, random-label accuracy per head, and probe accuracy per layer.

    Class accuracy and loss are on the fixed train subset and on test; random-label accuracy is on the train
    subset, with the labels of ``epoch`` (in ``shuffled`` mode with labels never trained on).
    """
    experiment = self.experiment
    # docs/design.md §4: shuffled labels change every epoch, so epoch's own labels are ones the heads have
    # just fitted, and accuracy on them is above chance without anything memorized across epochs (A.2
    # asks whether the heads predict labels they cannot have learned). The held-out draw is never trained on.
    if experiment.config.rlp.label_mode == "shuffled":
      epoch = labels.HELD_OUT_EPOCH
    out: dict[str, float] = {}
    for split, prefix in (("train_eval", "train"), ("test", "test")):
      total = None
      for _, batch, logits, feats in self.features.batches(
        params, batch_stats, split, epoch, limit=experiment.config.eval.train_examples
      ):
        if split == "test":
          batch.pop("rlp_labels", None)  # random labels are defined on training examples only
        sums = self.sums(params, logits, feats, batch)
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
      total = jax.tree.map(np.asarray, total)
      count = max(float(total["count"]), 1.0)
      out[f"{prefix}/accuracy"] = float(total["class_correct"]) / count
      out[f"{prefix}/loss"] = float(total["class_loss"]) / count
      for name in experiment.probe_layers:
        out[f"probe/{name}/{prefix}_accuracy"] = float(total[f"probe/{name}"]) / count
      if split == "train_eval":
        per_head = {n: total[f"rlp/{n}"] / count for n in experiment.rlp_layers}
        out.update(head_metrics.accuracy_metrics(per_head, experiment.num_labels))
    return out


# ----------------------------------------------------------------------------------------------------
# Per-example head logits (memorization scores)
# ----------------------------------------------------------------------------------------------------


def head_logits(
  experiment: Experiment, params, batch_stats, layers: Sequence[str], *, epoch: int, limit: int = -1
) -> Iterator[tuple[dict, Mapping[str, np.ndarray]]]:
  """``(host batch, {layer: (B, H, n) logits on host})`` of the heads in ``params['rlp']``.

  For every training example of the eval subset, with the random labels of ``epoch``. The host batch also
  holds the network's own ``class_logits`` (B, C): the classifier's loss is the baseline per-example score.
  """
  features = Features(experiment, layers)

  def logits(head_params, feats):
    heads = nnx.merge(experiment.heads_def, head_params)
    return {k: heads.layers[k](feats[k]) for k in layers}

  logits = jax.jit(logits)
  for batch, _, class_logits, feats in features.batches(
    params, batch_stats, "train_eval", epoch, limit=limit
  ):
    batch["class_logits"] = np.asarray(jax.device_get(class_logits))
    yield batch, jax.device_get(logits(params["rlp"], feats))
