"""Offline RLP heads (Fig. 2B): a fresh head trained on the *frozen* features of a saved network.

The paper's control for "does the online head measure the network or merely itself?": freeze the network
at a checkpoint (at initialization, or after any epoch), train an RLP head from scratch with the same
initialization, the same random labels and the same budget for every checkpoint, and report its
random-label accuracy. The network's parameters are only read.

``offline_accuracy`` is the reusable routine: the demo runs it on checkpoint 0, and the analysis tools
run it over every saved checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlp_jax import input_pipeline, models, optimizers, rlp


def extract_features(exp, model_params, batch_stats, layers, *, limit: int = -1, epoch: int = 0):
  """Pooled eval-mode features of the selected training examples, in index order.

  Returns ``({layer: (M, D) float32}, rlp_labels (M, num_heads))`` as NumPy arrays on host.
  """

  @jax.jit
  def features_of(params, stats, image):
    _, feats, _ = models.apply(exp.model_def, params, stats, image, train=False)
    return {k: rlp.pool_features(feats[k], exp.config.rlp.pool).astype(jnp.float32) for k in layers}

  chunks, label_chunks = [], []
  for batch in input_pipeline.eval_batches(exp.config, exp.info, "train_eval", epoch, limit=limit):
    mask = batch["mask"]
    feats = jax.device_get(features_of(model_params, batch_stats, batch["image"]))
    chunks.append({k: v[mask] for k, v in feats.items()})
    label_chunks.append(batch["rlp_labels"][mask])
  return ({k: np.concatenate([c[k] for c in chunks]) for k in layers}, np.concatenate(label_chunks))


def fit_heads(
  exp, features: Mapping[str, np.ndarray], rlp_labels: np.ndarray, *, num_epochs: int, batch_size: int
) -> dict[str, np.ndarray]:
  """Trains freshly initialized heads on fixed features; returns random-label accuracy per layer, (H,).

  The heads are built by ``rlp.build_heads`` — the same initialization as the online heads — and use the
  online heads' optimizer settings, for ``num_epochs`` over the examples in a seeded order.
  """
  layers = list(features)
  heads = rlp.build_heads(exp.config, exp.feature_dims, layers, exp.num_labels)
  graphdef, params = nnx.split(heads)
  params = params.to_pure_dict()
  m = len(rlp_labels)
  batch_size = min(batch_size, m)
  spe = m // batch_size
  tx = optimizers.make(exp.config.rlp.optimizer, steps_per_epoch=spe, total_steps=spe * num_epochs)
  opt_state = tx.init(params)

  def loss_fn(p, feats, y):
    logits = nnx.merge(graphdef, p)(feats)
    return jnp.mean(jnp.stack([rlp.cross_entropy(s, y).mean() for s in logits.values()]))

  @jax.jit
  def epoch_fn(p, opt_state, feats, y, order):
    # One jitted epoch (lax.scan over minibatches): offline heads are trained for every checkpoint,
    # so per-step dispatch would dominate on small feature sets.
    def step(carry, idx):
      p, s = carry
      grads = jax.grad(loss_fn)(p, {k: v[idx] for k, v in feats.items()}, y[idx])
      updates, s = tx.update(grads, s, p)
      return (optax.apply_updates(p, updates), s), None

    (p, opt_state), _ = jax.lax.scan(step, (p, opt_state), order)
    return p, opt_state

  feats = {k: jnp.asarray(v) for k, v in features.items()}
  y = jnp.asarray(rlp_labels)
  for epoch in range(num_epochs):
    order = np.random.default_rng([exp.config.seed, epoch]).permutation(m)[: spe * batch_size]
    params, opt_state = epoch_fn(params, opt_state, feats, y, order.reshape(spe, batch_size))

  correct = jax.jit(
    lambda p, f, y: {k: rlp.head_correct(s, y).mean(0) for k, s in nnx.merge(graphdef, p)(f).items()}
  )(params, feats, y)
  return {k: np.asarray(v) for k, v in correct.items()}


def offline_accuracy(exp, model_params, batch_stats, layers=None) -> dict[str, np.ndarray]:
  """Random-label accuracy (per layer, per head) of offline heads on a frozen network."""
  layers = list(layers or exp.rlp_layers)
  cfg = exp.config.offline
  feats, y = extract_features(exp, model_params, batch_stats, layers, limit=cfg.train_examples)
  return fit_heads(exp, feats, y, num_epochs=cfg.num_epochs, batch_size=cfg.batch_size)
