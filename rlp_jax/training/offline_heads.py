"""Offline RLP heads (Fig. 2B): a fresh head trained on the *frozen* features of a saved network.

The paper's control for "does the online head measure the network or merely itself?": freeze the network
at a checkpoint (at initialization, or after any epoch), train an RLP head from scratch with the same
initialization, the same random labels and the same budget for every checkpoint, and report its
random-label accuracy (docs/design.md §4). The network's parameters are only read.

The loop runs ``init_controls`` on checkpoint 0 (the demo's "offline @ init" columns: plain, scale-free, and
the converged probe, heads/ridge_probe.py, which it also fits to the trained network); ``python -m
rlp_jax.offline`` (analysis/offline.py) runs them over every saved checkpoint. ``offline.standardize``
z-scores each feature over the fitted set before the heads (an affine map: the plain head's hypothesis
class, without the features' scale), so that accuracy against ``offline.num_epochs`` shows the budget a
head needs, beside the probe's closed-form limit.
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
from rlp_jax.heads import ridge_probe, routing
from rlp_jax.heads.label_axis import HeadStats
from rlp_jax.training import evaluators, optimizers


def extract_features(experiment, model_params, batch_stats, layers, *, limit: int = -1, epoch: int = 0):
  """Pooled eval-mode features of the selected training examples, in order of their global index.

  Returns ``({layer: (M, D) float32}, rlp_labels (M, num_heads))`` as NumPy arrays on host. With several
  hosts each reads its own slice of the examples, the features are computed over the mesh like an eval
  step, and every host receives all of them: all hosts then fit the same offline heads on all M examples.
  (A host fitting only its own slice would memorize fewer labels, so more easily, and each host would
  report a different number.) Ordering by index makes the result independent of the number of hosts.
  """

  features = evaluators.Features(experiment, layers)
  rows = []
  params = {"model": model_params}
  for batch, _, _, feats in features.batches(params, batch_stats, "train_eval", epoch, limit=limit):
    local = {k: batch[k] for k in ("index", "mask", "rlp_labels")}
    if jax.process_count() > 1:
      # This host's rows of the features, then every host's rows of everything, aligned row for row.
      feats = multihost_utils.global_array_to_host_local_array(feats, experiment.mesh, P("data"))
      local = multihost_utils.process_allgather({**local, "feats": feats}, tiled=True)
    else:
      local = {**local, "feats": jax.device_get(feats)}
    mask = local["mask"]
    rows.append({"index": local["index"][mask], "rlp_labels": local["rlp_labels"][mask]})
    rows[-1].update({f"feats/{k}": v[mask] for k, v in local["feats"].items()})
  out = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
  order = np.argsort(out["index"], kind="stable")
  return {k: out[f"feats/{k}"][order] for k in layers}, out["rlp_labels"][order]


def standardized(features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Each feature z-scored over the examples given (constant features become 0).

  This is what the heads read with ``offline.standardize``.
  """
  out = {}
  for name, f in features.items():
    mean, scale = ridge_probe.standardization(f)
    out[name] = ((np.asarray(f, np.float64) - mean) / scale).astype(np.float32)
  return out


def probe_accuracy(
  experiment, features: Mapping[str, np.ndarray], rlp_labels: np.ndarray
) -> dict[str, np.ndarray]:
  """Random-label accuracy per layer, (H,), of the converged probe (heads/ridge_probe.py) on features."""
  return {k: ridge_probe.accuracy(f, rlp_labels, experiment.num_labels) for k, f in features.items()}


def fit_heads(
  experiment,
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
    experiment, features, rlp_labels, num_epochs=num_epochs, batch_size=batch_size, scale_free=scale_free
  )
  return heads_accuracy(graphdef, params, features, rlp_labels, label_chunk=experiment.config.rlp.label_chunk)


def heads_accuracy(graphdef, params, features, rlp_labels, *, label_chunk: int = 0) -> dict[str, np.ndarray]:
  """Per layer, the share of ``rlp_labels`` each head predicts from ``features``, (H,)."""

  @jax.jit
  def correct(p, feats, y):
    return {k: st.correct.mean(0) for k, st in _stats_by_layer(graphdef, p, feats, y, label_chunk).items()}

  out = correct(params, {k: jnp.asarray(v) for k, v in features.items()}, jnp.asarray(rlp_labels))
  return {k: np.asarray(v) for k, v in out.items()}


def _stats_by_layer(graphdef, params, feats, y, label_chunk: int) -> dict[str, HeadStats]:
  """Per layer, the heads' statistics as the online heads compute them (head_loss.py).

  Exact, and chunked over labels like them, so the (M, H, n) logits never exist (n = m on ImageNet).
  """
  heads = nnx.merge(graphdef, params).layers
  return {
    k: routing.parallel_head_stats(heads[k], heads[k].standardize(f), y, label_chunk=label_chunk)
    for k, f in feats.items()
  }


def train_heads(
  experiment,
  features: Mapping[str, np.ndarray],
  rlp_labels: np.ndarray,
  *,
  num_epochs: int,
  batch_size: int,
  scale_free: bool = False,
):
  """The trained heads of ``fit_heads`` as ``(graphdef, params)`` (``nnx.merge`` makes the ``LayerHeads``).

  The per-example scores of offline heads apply them to the features (analysis/scores.py).
  """
  layers = list(features)
  heads = heads_lib.build_heads(
    experiment.config,
    experiment.feature_dims,
    layers,
    experiment.num_labels,
    label_multiple=experiment.label_multiple,
    scale_free=scale_free,
  )
  graphdef, params = nnx.split(heads)
  m = len(rlp_labels)
  spe = m // min(batch_size, m)
  tx = optimizers.make(experiment.config.rlp.optimizer, steps_per_epoch=spe, total_steps=spe * num_epochs)
  return fit_fresh(
    graphdef,
    params.to_pure_dict(),
    tx,
    features,
    rlp_labels,
    num_epochs=num_epochs,
    batch_size=batch_size,
    seed=experiment.config.seed,
    label_chunk=experiment.config.rlp.label_chunk,
  )


def fit_fresh(
  graphdef,
  params,
  tx: optax.GradientTransformation,
  features: Mapping[str, np.ndarray],
  rlp_labels: np.ndarray,
  *,
  num_epochs: int,
  batch_size: int,
  seed: int,
  label_chunk: int = 0,
):
  """Heads ``(graphdef, params)`` trained by ``tx`` on fixed features for ``num_epochs``; returns the same.

  Minibatches in a seeded order; the loss is the online heads' L_rnd, computed as they compute it.
  """
  m = len(rlp_labels)
  batch_size = min(batch_size, m)
  spe = m // batch_size
  opt_state = tx.init(params)

  def loss_fn(p, feats, y):
    stats = _stats_by_layer(graphdef, p, feats, y, label_chunk).values()
    return jnp.mean(jnp.stack([st.ce.mean() for st in stats]))

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
    order = np.random.default_rng([seed, epoch]).permutation(m)[: spe * batch_size]
    params, opt_state = epoch_fn(params, opt_state, feats, y, order.reshape(spe, batch_size))

  return graphdef, params


def frozen_controls(
  experiment, model_params, batch_stats, *, heads=True, scale_free=False, probe=False, layers=None
) -> dict[str, dict[str, np.ndarray]]:
  """Controls on a frozen network, each {layer: (H,) accuracy}, from one feature extraction.

  ``heads``: offline heads of the online heads' variant (reading standardized features with
  ``offline.standardize``); ``heads_scale_free``: the same with a LayerNorm before every dense layer;
  ``probe``: the converged probe. The pooled features grow ~15x in norm during training on digits, and a
  head's reach in a fixed budget grows with them; the probe is blind to both scale and budget
  (docs/design.md §4).
  """
  layers = list(layers or experiment.rlp_layers)
  cfg = experiment.config.offline
  feats, y = extract_features(experiment, model_params, batch_stats, layers, limit=cfg.train_examples)
  fitted = standardized(feats) if cfg.standardize and (heads or scale_free) else feats
  fit = lambda sf: fit_heads(  # noqa: E731
    experiment, fitted, y, num_epochs=cfg.num_epochs, batch_size=cfg.batch_size, scale_free=sf
  )
  out = {}
  if heads:
    out["heads"] = fit(False)
  if scale_free:
    out["heads_scale_free"] = fit(True)
  if probe:
    out["probe"] = probe_accuracy(experiment, feats, y)
  return out


def offline_accuracy(experiment, model_params, batch_stats, layers=None) -> dict[str, np.ndarray]:
  """Random-label accuracy (per layer, per head) of offline heads on a frozen network."""
  return frozen_controls(experiment, model_params, batch_stats, layers=layers)["heads"]


def init_controls(
  experiment, model_params, batch_stats, *, scale_free: bool
) -> dict[str, dict[str, np.ndarray]]:
  """The end-of-run table's controls on the network at initialization (``frozen_controls``).

  ``offline_at_init`` (heads of the online heads' variant), with ``scale_free`` ``offline_at_init_scale_free``
  (a LayerNorm before every dense layer), with ``offline.ridge_probe`` ``probe_at_init`` (the converged
  probe).
  """
  controls = frozen_controls(
    experiment, model_params, batch_stats, scale_free=scale_free, probe=experiment.config.offline.ridge_probe
  )
  names = {
    "heads": "offline_at_init",
    "heads_scale_free": "offline_at_init_scale_free",
    "probe": "probe_at_init",
  }
  return {names[k]: v for k, v in controls.items()}


def frozen_probe(experiment, model_params, batch_stats, layers=None) -> dict[str, np.ndarray]:
  """The converged probe's random-label accuracy (per layer, per head) on a frozen network.

  It is the loop's ``probe_trained`` column beside ``probe_at_init``.
  """
  return frozen_controls(experiment, model_params, batch_stats, heads=False, probe=True, layers=layers)[
    "probe"
  ]
