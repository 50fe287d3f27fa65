"""RLP heads on your own Flax NNX model: its state, a jitted train step, evaluation and the init controls.

Public nnx API only. The model is any ``nnx.Module`` that sows what a head reads
(``self.sow(nnx.Intermediate, "features", h)``) and switches Dropout / BatchNorm with nnx's own
``model.train()`` / ``model.eval()``. The model's state is split by kind: ``nnx.Param`` is differentiated and
optimized, ``nnx.BatchStat`` is carried (updated by the forward pass in train mode, read in eval mode),
``nnx.RngState`` (Dropout's stream) is carried and advanced, and anything else is kept as it is::

  rlp = OwnModel(model, heads, model_tx=optax.sgd(0.1, momentum=0.9), reg_layers=["features"], reg_lambda=0.3)
  state = rlp.init()                                   # OwnState; rlp.init() again is the network at init
  state, metrics = rlp.train_step(state, x, y, index)  # index: each example's stable position in the data
  rlp.evaluate(state, x, y, index)                     # class and random-label accuracy, beside chance
  rlp.probe_accuracy(state, x, index)                  # the converged probe (the control blind to scale)
  rlp.offline_accuracy(state, x, index, num_epochs=30) # fresh heads on the frozen features (Fig. 2B)

The losses are routing.routed_losses (every stop_gradient placed there, docs/design.md §1); the heads get
their own optimizer (a constant Adam by default: they are a measuring instrument, §7).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlp_jax.data.labels import random_labels
from rlp_jax.heads import ridge_probe, routing
from rlp_jax.heads.heads import LayerHeads, pool_features
from rlp_jax.heads.metrics import accuracy_metrics
from rlp_jax.models import sown_features
from rlp_jax.training import offline_heads


class OwnState(NamedTuple):
  """Everything that changes during training; a pytree (checkpoint it with orbax as it is)."""

  params: dict  # {"model": the model's nnx.Param state, "heads": the heads'}, as pure dicts
  batch_stats: dict  # the model's nnx.BatchStat state ({} without BatchNorm)
  rngs: dict  # the model's nnx.RngState (Dropout's key and count; {} without)
  opt_state: Any
  step: jax.Array


class OwnModel:
  """RLP heads on ``model``: ``init``, ``train_step``, ``evaluate`` and the controls (module docstring)."""

  def __init__(
    self,
    model: nnx.Module,
    heads: LayerHeads,
    *,
    model_tx: optax.GradientTransformation,
    heads_tx: optax.GradientTransformation | None = None,
    reg_layers: Sequence[str] = (),
    reg_lambda: float = 0.0,
    seed: int = 0,
    pool: str = "mean",
    label_smoothing: float = 0.0,
  ):
    self.layers = list(heads.layers)
    if set(reg_layers) - set(self.layers):
      raise ValueError(f"reg_layers {sorted(set(reg_layers) - set(self.layers))} have no head: {self.layers}")
    first = heads.layers[self.layers[0]]
    self.num_labels, self.num_heads = first.num_valid, first.kernel.shape[0]
    self.seed, self.pool = seed, pool
    self._loss_kwargs = dict(
      reg_layers=tuple(reg_layers), reg_lambda=float(reg_lambda), label_smoothing=label_smoothing, pool=pool
    )
    model.train()  # the graph the train step merges: Dropout on, BatchNorm from batch statistics
    self._train_def, params, batch_stats, rngs, self._rest = nnx.split(
      model, nnx.Param, nnx.BatchStat, nnx.RngState, ...
    )
    model.eval()  # ... and the one evaluation merges: Dropout off, BatchNorm from its running averages
    self._eval_def = nnx.graphdef(model)
    self._heads_def, head_params = nnx.split(heads)
    self._initial = (params.to_pure_dict(), head_params.to_pure_dict(), batch_stats, rngs)
    params = {"model": params.to_pure_dict(), "heads": head_params.to_pure_dict()}
    labels = {part: jax.tree.map(lambda _, part=part: part, params[part]) for part in params}
    self.heads_tx = heads_tx or optax.adam(1e-3)
    self.tx = optax.multi_transform({"model": model_tx, "heads": self.heads_tx}, labels)
    self._step = jax.jit(self._train_step)
    self._forward = jax.jit(self._eval_forward)

  # ----- state ---------------------------------------------------------------------------------------

  def init(self) -> OwnState:
    """The state at construction: the model and heads as they were passed in, a fresh optimizer."""
    model_params, head_params, batch_stats, rngs = self._initial
    params = {"model": model_params, "heads": head_params}
    return OwnState(
      params=params,
      batch_stats=batch_stats.to_pure_dict(),
      rngs=rngs.to_pure_dict(),
      opt_state=self.tx.init(params),
      step=jnp.zeros((), jnp.int32),
    )

  def model(self, state: OwnState, *, train: bool = False) -> nnx.Module:
    """The model in ``state`` as an nnx.Module (eval mode unless ``train``)."""
    graphdef = self._train_def if train else self._eval_def
    return nnx.merge(graphdef, state.params["model"], state.batch_stats, state.rngs, self._rest)

  def random_labels(self, index) -> np.ndarray:
    """The examples' fixed random labels, (B, heads) int32, from their stable index (data/labels.py)."""
    return random_labels(self.seed, np.asarray(index), self.num_labels, self.num_heads)

  # ----- training ------------------------------------------------------------------------------------

  def _train_step(self, state: OwnState, x, y, rlp_y):
    def loss_fn(params):
      model = nnx.merge(self._train_def, params["model"], state.batch_stats, state.rngs, self._rest)
      logits, features = sown_features(model, x)
      total, parts = routing.routed_losses(
        class_logits=logits,
        features=features,
        labels=y,
        rlp_labels=rlp_y,
        heads=nnx.merge(self._heads_def, params["heads"]),
        probes=None,
        **self._loss_kwargs,
      )
      # The forward pass moved the batch statistics and Dropout's key count: carried, not differentiated.
      carried = (
        nnx.state(model, nnx.BatchStat).to_pure_dict(),
        nnx.state(model, nnx.RngState).to_pure_dict(),
      )
      parts["class_accuracy"] = jnp.mean(jnp.argmax(logits, -1) == y)
      return total, (parts, carried)

    (_, (parts, (batch_stats, rngs))), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    new = OwnState(optax.apply_updates(state.params, updates), batch_stats, rngs, opt_state, state.step + 1)
    metrics = {k: v for k, v in parts.items() if k.startswith("loss/") or k == "class_accuracy"}
    for name, correct in parts["rnd_correct"].items():
      metrics[f"rlp/{name}/accuracy"] = jnp.mean(correct, axis=0)  # (heads,): this batch's share
    return new, metrics

  def train_step(self, state: OwnState, x, y, index) -> tuple[OwnState, dict[str, jax.Array]]:
    """One optimizer step on a batch; returns the new state and this batch's metrics.

    ``x`` and ``y`` are the inputs and class labels, ``index`` each example's stable position in the training
    set (the random labels are a hash of it). Metrics: ``loss/class``, ``loss/rnd``, ``loss/reg``,
    ``loss/total`` (scalars) and ``rlp/<layer>/accuracy`` (shape (heads,): the batch's share of random labels
    predicted, before the step), ``class_accuracy`` (scalar, the batch's, before the step).
    """
    return self._step(state, jnp.asarray(x), jnp.asarray(y), jnp.asarray(self.random_labels(index)))

  # ----- evaluation ----------------------------------------------------------------------------------

  def _eval_forward(self, state: OwnState, x):
    logits, features = sown_features(self.model(state), x)
    return logits, {name: pool_features(features[name], self.pool) for name in self.layers}

  def features(
    self, state: OwnState, x, *, batch_size: int = 512
  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Class logits (M, classes) and each head's pooled input features (M, D), eval mode, on the host."""
    out = [self._forward(state, jnp.asarray(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    logits = np.concatenate([np.asarray(lg) for lg, _ in out])
    return logits, {k: np.concatenate([np.asarray(f[k]) for _, f in out]) for k in self.layers}

  def evaluate(self, state: OwnState, x, y, index, *, batch_size: int = 512) -> dict[str, float]:
    """``accuracy`` (class) and, per layer, ``rlp/<layer>/accuracy``, ``/chance`` and ``/chance_corrected``.

    Random-label accuracy is the online heads' on the examples given (training examples: the measure of
    memorization), averaged over heads; with several heads also ``rlp/<layer>/head_<k>/accuracy``.
    """
    logits, features = self.features(state, x, batch_size=batch_size)
    rlp_y = self.random_labels(index)
    heads = nnx.merge(self._heads_def, state.params["heads"])
    per_head = {}
    for name in self.layers:
      st = routing.parallel_head_stats(
        heads.layers[name], heads.layers[name].standardize(jnp.asarray(features[name])), jnp.asarray(rlp_y)
      )
      per_head[name] = np.asarray(st.correct).mean(0)
    return {
      "accuracy": float(np.mean(logits.argmax(-1) == np.asarray(y))),
      **accuracy_metrics(per_head, self.num_labels),
    }

  # ----- the controls --------------------------------------------------------------------------------

  def probe_accuracy(self, state: OwnState, x, index) -> dict[str, np.ndarray]:
    """The converged probe per layer, (heads,): a closed-form fit of the random labels on standardized
    features, blind to their scale and to any step budget (heads/ridge_probe.py). Compare
    ``probe_accuracy(rlp.init(), ...)`` with the trained state's."""
    _, features = self.features(state, x)
    rlp_y = self.random_labels(index)
    return {name: ridge_probe.accuracy(f, rlp_y, self.num_labels) for name, f in features.items()}

  def offline_accuracy(
    self, state: OwnState, x, index, *, num_epochs: int, batch_size: int = 128, heads_tx=None
  ) -> dict[str, np.ndarray]:
    """Fresh heads (the online heads' initialization) trained on the frozen features; accuracy, (heads,).

    On ``rlp.init()`` this is the paper's control of Fig. 2B (what untrained features allow). The heads'
    optimizer is the online heads' (``heads_tx``) unless given; give it their budget (epochs, batch size)
    too, to compare like with like.
    """
    _, features = self.features(state, x)
    rlp_y = self.random_labels(index)
    graphdef, params = offline_heads.fit_fresh(
      self._heads_def,
      self._initial[1],  # the online heads' initialization
      heads_tx or self.heads_tx,
      features,
      rlp_y,
      num_epochs=num_epochs,
      batch_size=batch_size,
      seed=self.seed,
    )
    return offline_heads.heads_accuracy(graphdef, params, features, rlp_y)
