"""Feldman-Zhang memorization, computed by training many models on random subsets (docs/design.md §4).

Feldman & Zhang (2020) define the memorization of training example i with label y_i as

    mem(i) = P(h(x_i) = y_i | i in S) - P(h(x_i) = y_i | i not in S),

the probabilities over the random training subset S and the training randomness: how much having the
example in the training set changes whether the network predicts its (possibly noisy) label. It is
estimated by training K models, each on its own random subset of ``rate·M`` of the M trained-on examples,
and averaging each example's correctness over the models that held it (``in``) and those that did not
(``out``). ``P(correct | out)`` alone is the C-score-style consistency (Jiang et al., 2021).

Here the models are the run's own: its config's model, optimizer, epochs and batch size (on the eval
transform of the images, without augmentation), its labels (with its label noise), only the RLP heads and
probes left out. They are trained ``models_per_step`` at a time in one jitted step (``Ensemble``), each on
its own subset (``labels.subset_mask``: exact in
size, a pure function of (seed, model)) in its own order.

Written to an ``.npz`` aligned to the dataset index (row i is example i; examples outside the dataset
fraction NaN): ``mem`` with a bootstrap interval over the models (``mem_low``, ``mem_high``), ``p_in``,
``p_out`` (the C-score), ``num_in``, ``num_out``, ``label`` (clean), ``train_label``, ``is_noisy`` and the
raw ``in_mask``, ``correct`` (K, m) from which every estimate can be recomputed for any subset of the models.
``python -m rlp_jax.memorization --ground_truth=FILE`` correlates it with every RLP score.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from rlp_jax import models
from rlp_jax.analysis.ground_truth_stats import estimates
from rlp_jax.data import input_pipeline, labels
from rlp_jax.heads import routing
from rlp_jax.infra import rundir
from rlp_jax.training import optimizers

GROUND_TRUTH_FILE = "ground_truth.npz"


def load_examples(config, info, split: str) -> dict[str, np.ndarray]:
  """Every example of ``split``, unaugmented, as host arrays in index order.

  ``split`` is 'train_eval' (the trained-on ones, with their training labels) or 'test'.
  """
  rows = []
  for batch in input_pipeline.eval_batches(config, info, split):
    keep = batch["mask"]
    rows.append(
      {k: batch[k][keep] for k in ("image", "label", "index", "clean_label", "is_noisy") if k in batch}
    )
  out = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
  order = np.argsort(out["index"], kind="stable")
  return {k: v[order] for k, v in out.items()}


def subset_masks(seed: int, num_models: int, num_examples: int, rate: float) -> np.ndarray:
  """(K, M) bool: model k's training subset (``labels.subset_mask``)."""
  return np.stack([labels.subset_mask(seed, k, num_examples, rate) for k in range(num_models)])


class Ensemble:
  """The run's model, ``models_per_step`` copies of it trained side by side in one jitted step.

  The copies are unrolled in the step (a list of parameter trees), not ``jax.vmap``ped: on XLA's CPU
  backend a vmapped convolution becomes a grouped one, measured 3.4x slower per model than the unrolled
  copies, and a ``lax.scan`` over the steps of an epoch 35x slower than a step per call (convolutions
  inside a loop); the step per call costs one dispatch per ``models_per_step`` models."""

  def __init__(self, config: ml_collections.ConfigDict, info, num_train: int):
    self.config = config
    self.batch = min(config.batch_size, num_train)
    self.steps_per_epoch = num_train // self.batch
    self.tx = optimizers.make(
      config.optimizer,
      steps_per_epoch=self.steps_per_epoch,
      total_steps=self.steps_per_epoch * config.num_epochs,
    )

    def new_model(key):
      return models.create_model(config.model, info.num_classes, info.input_shape, rngs=nnx.Rngs(key))

    self.model_def = nnx.graphdef(nnx.eval_shape(lambda: new_model(jax.random.key(0))))

    def init(key):
      _, params, stats = nnx.split(new_model(key), nnx.Param, nnx.BatchStat)
      params = params.to_pure_dict()
      return params, stats.to_pure_dict(), self.tx.init(params)

    self.init = jax.jit(init)
    self.step = jax.jit(self._steps, donate_argnums=0)
    self.predict = jax.jit(self._predict)

  def _steps(self, states, images, targets, order, keys):
    """One training step of every model copy.

    ``states`` is a list of (params, stats, opt_state), ``order`` (K, B) indices into ``images``, ``keys``
    (K,) dropout keys.
    """
    out = []
    for (params, stats, opt_state), idx, key in zip(states, order, keys, strict=True):
      (_, stats), grads = jax.value_and_grad(self._loss, has_aux=True)(
        params, stats, images[idx], targets[idx], key
      )
      updates, opt_state = self.tx.update(grads, opt_state, params)
      out.append((optax.apply_updates(params, updates), stats, opt_state))
    return out

  def _loss(self, params, stats, x, y, key):
    logits, _, new_stats = models.apply(self.model_def, params, stats, x, train=True, dropout_key=key)
    return routing.cross_entropy(logits, y, self.config.label_smoothing).mean(), new_stats

  def _predict(self, params, stats, x):
    logits, _, _ = models.apply(self.model_def, params, stats, x, train=False)
    return jnp.argmax(logits, -1)

  def train(self, seed: int, first: int, masks: np.ndarray, images, targets) -> list:
    """Trains models ``first .. first + len(masks) - 1`` on their subsets and returns their states.

    The states are (params, stats, opt_state). Model k's init and dropout keys fold k into the seed; its order
    is seeded by (seed, k, epoch).
    """
    keys = [jax.random.fold_in(jax.random.key(seed), first + j) for j in range(len(masks))]
    states = [self.init(key) for key in keys]
    members = [np.flatnonzero(m) for m in masks]
    size = self.steps_per_epoch * self.batch
    for epoch in range(self.config.num_epochs):
      order = np.stack(
        [
          ids[np.random.default_rng([seed, first + j, epoch]).permutation(len(ids))][:size]
          for j, ids in enumerate(members)
        ]
      ).reshape(len(masks), self.steps_per_epoch, self.batch)
      for t in range(self.steps_per_epoch):
        step = epoch * self.steps_per_epoch + t
        drop = [jax.random.fold_in(key, step) for key in keys]
        states = self.step(states, images, targets, jnp.asarray(order[:, t]), drop)
    return states

  def correct(self, states, images, targets, chunk: int = 2048) -> np.ndarray:
    """(K, N) bool: each model's prediction on every example equals its target."""
    preds = [
      np.concatenate(
        [np.asarray(self.predict(p, s, images[i : i + chunk])) for i in range(0, len(images), chunk)]
      )
      for p, s, _ in states
    ]
    return np.stack(preds) == np.asarray(targets)[None]


def compute(
  config: ml_collections.ConfigDict,
  output: str | None,
  *,
  num_models: int,
  rate: float = 0.7,
  models_per_step: int = 32,
  num_boot: int = 1000,
  log=print,
) -> dict[str, np.ndarray]:
  """Trains ``num_models`` models on ``rate`` subsets, writes ``output`` and returns its arrays.

  ``output`` is a .npz file (None: not written).
  """
  info = input_pipeline.get_info(config)
  train = load_examples(config, info, "train_eval")
  test = load_examples(config, info, "test")
  m_sel = len(train["index"])
  masks = subset_masks(config.seed, num_models, m_sel, rate)
  ens = Ensemble(config, info, int(masks[0].sum()))
  images, targets = jnp.asarray(train["image"]), jnp.asarray(train["label"])
  correct, test_acc = [], []
  start = time.time()
  for first in range(0, num_models, models_per_step):
    group = masks[first : first + models_per_step]
    states = ens.train(config.seed, first, group, images, targets)
    correct.append(ens.correct(states, images, targets))
    test_acc.append(ens.correct(states, jnp.asarray(test["image"]), test["label"]).mean(1))
    done = first + len(group)
    log(
      f"ground truth: {done}/{num_models} models trained ({time.time() - start:.0f}s); test accuracy "
      f"{np.mean(np.concatenate(test_acc)):.4f}, train accuracy in/out of the subset "
      f"{np.mean(correct[-1][group]):.4f}/{np.mean(correct[-1][~group]):.4f}"
    )
  correct = np.concatenate(correct)
  est = estimates(correct, masks, num_boot=num_boot, seed=config.seed)
  m = info.num_train
  rows = train["index"]

  def full(values, fill=np.nan, dtype=np.float64):
    arr = np.full((m, *np.shape(values)[1:]), fill, dtype)
    arr[rows] = values
    return arr

  out = {k: full(v) for k, v in est.items()}
  out.update(
    index=np.arange(m),
    scored=full(np.ones(m_sel, bool), False, bool),
    label=full(train["clean_label"], -1, np.int64),
    train_label=full(train["label"], -1, np.int64),
    is_noisy=full(train["is_noisy"], False, bool),
    in_mask=np.stack([full(mask, False, bool) for mask in masks]),
    correct=np.stack([full(c, False, bool) for c in correct]),
    test_accuracy=np.concatenate(test_acc),
    rate=np.asarray(rate),
    num_epochs=np.asarray(config.num_epochs),
  )
  if output:
    rundir.write_npz(output, out)
  return out
