"""The jitted train step.

Data flow of one train step::

  batch (image, label, index, rlp_labels) --device_put(data sharding)--> train_step(state, batch)
    forward(model, train=True) -> class logits + sown intermediates
    routing.routed_losses(...) -> L_class + L_rnd + λ·L_reg + L_probe  (all gradient routing lives there)
    one optax.multi_transform: the backbone+class head, the RLP heads and the probes each have their own
    optimizer, so clipping/decay/schedules of one group never touch another.
"""

from __future__ import annotations

import jax
import optax
from flax import nnx

from rlp_jax import models
from rlp_jax.heads import routing
from rlp_jax.infra import streams
from rlp_jax.training.experiment import Experiment, TrainState


def _losses(experiment: Experiment, params, batch_stats, batch, *, train: bool, dropout_key=None):
  cfg = experiment.config
  logits, features, new_stats = models.apply(
    experiment.model_def, params["model"], batch_stats, batch["image"], train=train, dropout_key=dropout_key
  )
  total, parts = routing.routed_losses(
    class_logits=logits,
    features=features,
    labels=batch["label"],
    rlp_labels=batch.get("rlp_labels"),
    # Test batches carry no random labels (they are defined on training examples only).
    heads=nnx.merge(experiment.heads_def, params["rlp"])
    if experiment.heads_def and "rlp_labels" in batch
    else None,
    probes=nnx.merge(experiment.probes_def, params["probes"]) if experiment.probes_def else None,
    reg_layers=experiment.reg_layers,
    reg_lambda=cfg.rlp.reg_lambda if train else 0.0,
    label_smoothing=cfg.label_smoothing,
    pool=experiment.pool,
    mesh=experiment.mesh,
    label_chunk=cfg.rlp.label_chunk,
    loss_kernel=cfg.rlp.loss_kernel,
    reg_normalization=cfg.rlp.reg_normalization,
  )
  return total, (parts, logits, new_stats)


def make_train_step(experiment: Experiment):
  dropout_base = streams.key(experiment.config.seed, streams.DROPOUT)

  def train_step(state: TrainState, batch) -> TrainState:
    # The dropout key is a function of (seed, step) only: resumption replays the same masks.
    key = jax.random.fold_in(dropout_base, state.step)
    grad_fn = jax.value_and_grad(
      lambda p: _losses(experiment, p, state.batch_stats, batch, train=True, dropout_key=key), has_aux=True
    )
    (_, (parts, _, new_stats)), grads = grad_fn(state.params)
    updates, opt_state = experiment.tx.update(grads, state.opt_state, state.params)
    sums = {k: state.loss_sums[k] + parts[k] for k in state.loss_sums}
    return state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=new_stats,
      opt_state=opt_state,
      loss_sums=sums,
    )

  batch_sharding = experiment.data_sharding
  return jax.jit(
    train_step,
    in_shardings=(experiment.state_sharding, batch_sharding),
    out_shardings=experiment.state_sharding,
    donate_argnums=0,
  )
