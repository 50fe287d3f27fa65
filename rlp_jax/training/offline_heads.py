"""Offline RLP heads (Fig. 2B): a fresh head trained on the *frozen* features of a saved network.

The paper's control for "does the online head measure the network or merely itself?": freeze the network
at a checkpoint (at initialization, or after any epoch), train an RLP head from scratch with the same
initialization, the same random labels and the same budget for every checkpoint, and report its
random-label accuracy (docs/design.md §4). The network's parameters are only read.

The loop runs ``init_controls`` on checkpoint 0 (the demo's "offline @ init" columns, plain and scale-free);
``python -m rlp_jax.offline`` (analysis/offline.py) runs it over every saved checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from rlp_jax.heads import heads as heads_lib
from rlp_jax.heads import routing
from rlp_jax.training import evaluators, optimizers


def extract_features(exp, model_params, batch_stats, layers, *, limit: int = -1, epoch: int = 0):
  """Pooled eval-mode features of the selected training examples, in order of their global index.

  Returns ``({layer: (M, D) float32}, rlp_labels (M, num_heads))`` as NumPy arrays on host. With several
  hosts each reads its own slice of the examples, the features are computed over the mesh like an eval
  step, and every host receives all of them: all hosts then fit the same offline heads on all M examples.
  (A host fitting only its own slice would memorize fewer labels, so more easily, and each host would
  report a different number.) Ordering by index makes the result independent of the number of hosts.
  """

  features = evaluators.Features(exp, layers)
  rows = []
  params = {"model": model_params}
  for batch, _, _, feats in features.batches(params, batch_stats, "train_eval", epoch, limit=limit):
    local = {k: batch[k] for k in ("index", "mask", "rlp_labels")}
    if jax.process_count() > 1:
      # This host's rows of the features, then every host's rows of everything, aligned row for row.
      feats = multihost_utils.global_array_to_host_local_array(feats, exp.mesh, P("data"))
      local = multihost_utils.process_allgather({**local, "feats": feats}, tiled=True)
    else:
      local = {**local, "feats": jax.device_get(feats)}
    mask = local["mask"]
    rows.append({"index": local["index"][mask], "rlp_labels": local["rlp_labels"][mask]})
    rows[-1].update({f"feats/{k}": v[mask] for k, v in local["feats"].items()})
  out = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
  order = np.argsort(out["index"], kind="stable")
  return {k: out[f"feats/{k}"][order] for k in layers}, out["rlp_labels"][order]


def fit_heads(
  exp,
  features: Mapping[str, np.ndarray],
  rlp_labels: np.ndarray,
  *,
  num_epochs: int,
  batch_size: int,
  scale_free: bool = False,
) -> dict[str, np.ndarray]:
  """Trains freshly initialized heads on fixed features; returns random-label accuracy per layer, (H,).

  The heads are built by ``heads_lib.build_heads`` — the same initialization as the online heads — and use the
  online heads' optimizer settings, for ``num_epochs`` over the examples in a seeded order. ``scale_free``
  puts a LayerNorm before every head's dense layer (same dense init): its accuracy does not depend on the
  features' norm.
  """
  graphdef, params = train_heads(
    exp, features, rlp_labels, num_epochs=num_epochs, batch_size=batch_size, scale_free=scale_free
  )
  chunk = exp.config.rlp.label_chunk

  @jax.jit
  def correct(p, feats, y):
    return {k: st["correct"].mean(0) for k, st in _head_stats(graphdef, p, feats, y, chunk).items()}

  out = correct(params, {k: jnp.asarray(v) for k, v in features.items()}, jnp.asarray(rlp_labels))
  return {k: np.asarray(v) for k, v in out.items()}


def _head_stats(graphdef, params, feats, y, chunk: int) -> dict[str, dict]:
  """Per layer, the online heads' loss statistics (head_loss.py): exact, and chunked over labels like
  them, so the (M, H, n) logits never exist (n = m on ImageNet)."""
  heads = nnx.merge(graphdef, params).layers
  return {k: routing.head_stats(heads[k], heads[k].standardize(f), y, chunk=chunk) for k, f in feats.items()}


def train_heads(
  exp,
  features: Mapping[str, np.ndarray],
  rlp_labels: np.ndarray,
  *,
  num_epochs: int,
  batch_size: int,
  scale_free: bool = False,
):
  """The trained heads of ``fit_heads`` as ``(graphdef, params)`` (``nnx.merge`` makes the ``LayerHeads``);
  the per-example scores of offline heads apply them to the features (analysis/scores.py)."""
  layers = list(features)
  heads = heads_lib.build_heads(
    exp.config,
    exp.feature_dims,
    layers,
    exp.num_labels,
    label_multiple=exp.label_multiple,
    scale_free=scale_free,
  )
  graphdef, params = nnx.split(heads)
  params = params.to_pure_dict()
  m = len(rlp_labels)
  batch_size = min(batch_size, m)
  spe = m // batch_size
  tx = optimizers.make(exp.config.rlp.optimizer, steps_per_epoch=spe, total_steps=spe * num_epochs)
  opt_state = tx.init(params)

  chunk = exp.config.rlp.label_chunk

  def loss_fn(p, feats, y):
    return jnp.mean(jnp.stack([st["ce"].mean() for st in _head_stats(graphdef, p, feats, y, chunk).values()]))

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

  return graphdef, params


def offline_accuracy(exp, model_params, batch_stats, layers=None) -> dict[str, np.ndarray]:
  """Random-label accuracy (per layer, per head) of offline heads on a frozen network."""
  layers = list(layers or exp.rlp_layers)
  cfg = exp.config.offline
  feats, y = extract_features(exp, model_params, batch_stats, layers, limit=cfg.train_examples)
  return fit_heads(exp, feats, y, num_epochs=cfg.num_epochs, batch_size=cfg.batch_size)


def init_controls(exp, model_params, batch_stats, *, scale_free: bool) -> dict[str, dict[str, np.ndarray]]:
  """The end-of-run table's controls on the network at initialization, from one feature extraction:
  ``offline_at_init`` (heads of the online heads' variant) and, with ``scale_free``,
  ``offline_at_init_scale_free`` (a LayerNorm before every dense layer). The pooled features grow ~15x in
  norm during training on digits; a head that ignores scale tells whether the online heads' lead over the
  control is the features' content or only their size (docs/design.md §4)."""
  cfg = exp.config.offline
  feats, y = extract_features(exp, model_params, batch_stats, list(exp.rlp_layers), limit=cfg.train_examples)
  fit = lambda sf: fit_heads(  # noqa: E731
    exp, feats, y, num_epochs=cfg.num_epochs, batch_size=cfg.batch_size, scale_free=sf
  )
  out = {"offline_at_init": fit(False)}
  if scale_free:
    out["offline_at_init_scale_free"] = fit(True)
  return out
