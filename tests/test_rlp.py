"""The losses of DESIGN §1: numerics, the sign of L_reg, and gradient routing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlp_jax import models
from rlp_jax.data import input_pipeline
from rlp_jax.heads import heads as heads_lib
from rlp_jax.heads import routing
from rlp_jax.training import experiment, steps


def test_log1m_softmax_matches_naive_form_where_that_is_accurate():
  logits = jax.random.normal(jax.random.key(0), (64, 5, 17)) * 3
  y = jax.random.randint(jax.random.key(1), (64, 5), 0, 17)
  p = jnp.take_along_axis(jax.nn.softmax(logits), y[..., None], -1)[..., 0]
  np.testing.assert_allclose(routing.log1m_softmax(logits, y), jnp.log1p(-p), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target_logit", [1e4, 80.0, -1e4])
def test_reg_penalty_is_finite_with_finite_gradients_at_saturation(target_logit):
  logits = jnp.array([[target_logit, 0.0, -3.0, 1.0]])
  y = jnp.array([0])
  value, grad = jax.value_and_grad(lambda s: -routing.log1m_softmax(s, y).sum())(logits)
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  if target_logit > 0:
    assert value > 50  # the penalty is large, not clipped to something harmless
  # The naive form is what this guards against:
  naive = -jnp.log(1 - jax.nn.softmax(logits)[0, 0])
  assert target_logit < 100 or not np.isfinite(naive)


def test_one_gradient_step_on_l_reg_lowers_the_random_label_probability():
  """The sign: descending -log(1 - p̂) must make the head *less* sure of the random label."""
  head = heads_lib.ParallelHeads(8, 10, 1, rngs=nnx.Rngs(0))
  z = jax.random.normal(jax.random.key(2), (32, 8))
  y = jax.random.randint(jax.random.key(3), (32, 1), 0, 10)

  def p_hat(z):
    return jnp.take_along_axis(jax.nn.softmax(head(z)), y[..., None], -1).mean()

  def l_reg(z):
    return -routing.log1m_softmax(head(z), y).mean()

  before = p_hat(z)
  z_after = z - 1.0 * jax.grad(l_reg)(z)
  assert p_hat(z_after) < before
  assert l_reg(z_after) < l_reg(z)
  assert l_reg(z) >= 0


def test_parallel_heads_variants_shapes():
  z = jnp.ones((4, 6))
  for kwargs in ({}, {"norm": True}, {"hidden_dim": 5}, {"norm": True, "hidden_dim": 3}):
    out = heads_lib.ParallelHeads(6, 11, 3, rngs=nnx.Rngs(0), **kwargs)(z)
    assert out.shape == (4, 3, 11) and out.dtype == jnp.float32
  assert heads_lib.pool_features(jnp.ones((2, 4, 4, 3))).shape == (2, 3)
  assert heads_lib.pool_features(jnp.ones((2, 4, 4, 3)), "flatten").shape == (2, 48)


def test_parallel_heads_are_independent_classifiers():
  heads = heads_lib.ParallelHeads(6, 4, 3, rngs=nnx.Rngs(0))
  z = jax.random.normal(jax.random.key(0), (5, 6))
  out = heads(z)
  for h in range(3):
    np.testing.assert_allclose(out[:, h], z @ heads.kernel[...][h] + heads.bias[...][h], rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Gradient routing on a real model: each loss alone reaches exactly its parameter group.
# ---------------------------------------------------------------------------------------------------


def _groups(grads):
  """Split the gradient tree into DESIGN §1's groups: θ (backbone), φ (class head), ψ, probes."""
  model = grads["model"]
  return {
    "theta": {k: v for k, v in model.items() if k != "head"},
    "phi": model["head"],
    "psi": grads["rlp"],
    "probes": grads["probes"],
  }


def _norm(tree) -> float:
  leaves = jax.tree.leaves(tree)
  return float(sum(jnp.sum(jnp.abs(x)) for x in leaves)) if leaves else 0.0


@pytest.mark.parametrize("model_name", ["mlp", "cnn", "wrn"])
def test_each_loss_reaches_exactly_its_parameters(tiny_config, model_name):
  config = tiny_config
  config.model.name = model_name
  config.model.width, config.model.depth = (8, 2) if model_name != "wrn" else (1, 10)
  config.model.dropout = 0.1
  config.rlp.layers, config.rlp.reg_layers, config.probes.layers = "all", "all", "all"
  config.rlp.num_heads = 2
  config.rlp.reg_lambda = 1.0
  exp, state = experiment.build(config)
  batch = next(input_pipeline.train_batches(config, exp.info, epoch=0))
  batch = {k: jnp.asarray(batch[k]) for k in ("image", "label", "rlp_labels")}

  def part(params, name):
    logits, feats, _ = models.apply(
      exp.model_def,
      params["model"],
      state.batch_stats,
      batch["image"],
      train=True,
      dropout_key=jax.random.key(0),
    )
    _, parts = routing.routed_losses(
      class_logits=logits,
      features=feats,
      labels=batch["label"],
      rlp_labels=batch["rlp_labels"],
      heads=nnx.merge(exp.heads_def, params["rlp"]),
      probes=nnx.merge(exp.probes_def, params["probes"]),
      reg_layers=exp.reg_layers,
      reg_lambda=config.rlp.reg_lambda,
    )
    return parts[name]

  expected = {
    "loss/class": {"theta", "phi"},
    "loss/rnd": {"psi"},
    "loss/reg": {"theta"},
    "loss/probe": {"probes"},
  }
  grad = jax.jit(jax.grad(part), static_argnums=1)
  for name, reach in expected.items():
    groups = _groups(grad(state.params, name))
    moved = {g for g, tree in groups.items() if _norm(tree) > 0}
    assert moved == reach, (name, moved)
    # Every head's parameters learn from L_rnd (no head silently detached).
    if name == "loss/rnd":
      assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(groups["psi"]))


def test_label_chunk_in_training_equals_full_logits(tiny_config):
  from rlp_jax.data import input_pipeline

  config = tiny_config
  config.rlp.num_labels, config.rlp.reg_lambda = 30, 0.5

  def run(chunk):
    config.rlp.label_chunk = chunk
    exp, state = experiment.build(config)
    step = steps.make_train_step(exp)
    for batch in list(input_pipeline.train_batches(config, exp.info, 0))[:3]:
      state = step(state, experiment.device_batch(exp, batch))
    return exp, jax.device_get(state)

  exp, chunked = run(8)  # 30 labels padded to 32, in blocks of 8
  _, full = run(0)
  assert exp.label_multiple == 8 and chunked.params["rlp"]["layers"]["pre_logits"]["kernel"].shape[-1] == 32
  np.testing.assert_allclose(chunked.loss_sums["loss/rnd"], full.loss_sums["loss/rnd"], rtol=1e-5)
  np.testing.assert_allclose(chunked.loss_sums["loss/reg"], full.loss_sums["loss/reg"], rtol=1e-5)
  same = jax.tree.map(
    lambda a, b: np.allclose(a, b, rtol=1e-4, atol=1e-6), chunked.params["model"], full.params["model"]
  )
  assert all(jax.tree.leaves(same))
