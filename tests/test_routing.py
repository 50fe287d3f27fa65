"""heads/routing.py, the losses of docs/design.md §1: numerics, the sign of L_reg, and gradient routing."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlp_jax import models
from rlp_jax.data import input_pipeline
from rlp_jax.heads import heads as heads_lib
from rlp_jax.heads import routing
from rlp_jax.training import experiment as experiment_lib
from rlp_jax.training import steps

# ---------------------------------------------------------------------------------------------------
# L_reg through routed_losses, as the train step computes it: the features z stand in for θ.
# ---------------------------------------------------------------------------------------------------


def _heads():
  return heads_lib.LayerHeads({"block": 8}, 10, 1, norm=False, hidden_dim=0, rngs=nnx.Rngs(0))


def _routed(heads, z, y, reg_lambda, **kwargs):
  """routed_losses on one layer's (B, 2, 2, 8) feature map, with class logits that do not depend on z: the
  gradient of the total with respect to z is then λ·∇L_reg alone (L_rnd reads detached features)."""
  b = z.shape[0]
  return routing.routed_losses(
    class_logits=jnp.zeros((b, 3)),
    features={"block": z},
    labels=jnp.zeros((b,), jnp.int32),
    rlp_labels=y,
    heads=heads,
    probes=None,
    reg_layers=("block",),
    reg_lambda=reg_lambda,
    **kwargs,
  )


@pytest.mark.parametrize("n,padded", [(10, 10), (40, 40), (10, 16)])
def test_paper_lambda_convention_equals_per_example_at_lambda_over_n(n, padded):
  """rlp.reg_normalization='paper' is Eq. 4 with its 1/n: its λ is λ/n per example. The total, L_reg's
  share of it and the gradient reaching the features equal the per-example convention's at λ/n, and
  differ at λ itself (so the test can fail). n is the number of real labels, not the padded label axis
  (a label axis padded for sharding, 10 -> 16, must not change what λ means)."""
  heads = heads_lib.LayerHeads(
    {"block": 8}, padded, 1, norm=False, hidden_dim=0, num_valid=n, rngs=nnx.Rngs(0)
  )
  z = jax.random.normal(jax.random.key(1), (6, 2, 2, 8)) * 3
  y = jax.random.randint(jax.random.key(2), (6, 1), 0, n)
  lam = 50.0

  def total(zz, reg_lambda, norm):
    return _routed(heads, zz, y, reg_lambda, reg_normalization=norm)[0]

  paper, same, unscaled = (lam, "paper"), (lam / n, "per_example"), (lam, "per_example")
  np.testing.assert_allclose(total(z, *paper), total(z, *same), rtol=1e-6)
  reg = lambda reg_lambda, norm: float(
    _routed(heads, z, y, reg_lambda, reg_normalization=norm)[1]["loss/reg"]
  )  # noqa: E731
  np.testing.assert_allclose(reg(lam, "paper") * n, reg(lam, "per_example"), rtol=1e-6)
  g_paper, g_same, g_unscaled = (jax.grad(total)(z, *args) for args in (paper, same, unscaled))
  np.testing.assert_allclose(g_paper, g_same, rtol=1e-5, atol=1e-8)
  assert float(jnp.abs(g_same).max()) > 1e-4
  assert float(jnp.abs(g_unscaled - g_paper).max()) > 1e-3 * float(jnp.abs(g_unscaled).max())
  assert abs(float(total(z, *unscaled)) - float(total(z, *paper))) > 1e-3


def _p_hat(heads, z, y):
  """p̂_ŷ (B, H): the head's softmax probability of the random label, from its plain forward pass."""
  logits = heads.layers["block"](heads_lib.pool_features(z))
  return np.take_along_axis(np.asarray(jax.nn.softmax(logits), np.float64), np.asarray(y)[..., None], -1)[
    ..., 0
  ]


@pytest.mark.parametrize(
  "variant", [{}, {"norm": True}, {"hidden_dim": 16}], ids=["linear", "norm", "hidden"]
)
def test_one_gradient_step_on_l_reg_lowers_the_random_label_probability(variant):
  """The sign: a descent step of the total loss (λ > 0) on the features must make the frozen head *less*
  sure of every example's random label, and lower L_reg = mean -log(1 - p̂_ŷ) >= 0."""
  kwargs = dict(norm=False, hidden_dim=0) | variant
  heads = heads_lib.LayerHeads({"block": 8}, 10, 1, rngs=nnx.Rngs(0), **kwargs)
  z = jax.random.normal(jax.random.key(2), (16, 2, 2, 8))
  y = jax.random.randint(jax.random.key(3), (16, 1), 0, 10)
  grad_fn = jax.jit(jax.value_and_grad(lambda z: _routed(heads, z, y, 1.0), has_aux=True))
  (_, parts), dz = grad_fn(z)
  p_before = _p_hat(heads, z, y)
  # L_reg is what it says, against the naive form in float64 (accurate here: p̂ is far from 1).
  np.testing.assert_allclose(parts["loss/reg"], -np.log1p(-p_before).mean(), rtol=1e-5)
  assert parts["loss/reg"] >= 0 and float(jnp.abs(dz).sum()) > 0

  z_after = z - 0.05 * dz
  (_, parts_after), _ = grad_fn(z_after)
  p_after = _p_hat(heads, z_after, y)
  assert np.all(p_after < p_before), (p_before - p_after).min()
  assert parts_after["loss/reg"] < parts["loss/reg"]


@pytest.mark.parametrize("target_logit", [1e4, 80.0, -1e4])
def test_reg_penalty_is_finite_with_finite_gradients_at_saturation(target_logit):
  """The head's bias puts s_ŷ at ``target_logit`` for every example: at 1e4 (and 80) p̂_ŷ rounds to 1 in
  float32 and the naive -log(1 - p̂) is inf; the loss and every gradient of the step must stay finite."""
  heads = _heads()
  head = heads.layers["block"]
  head.bias[...] = head.bias[...].at[:, 0].set(target_logit)
  z = jax.random.normal(jax.random.key(4), (8, 2, 2, 8))
  y = jnp.zeros((8, 1), jnp.int32)  # ŷ = 0 everywhere
  graphdef, head_params = nnx.split(heads)

  def total(z, head_params):
    return _routed(nnx.merge(graphdef, head_params), z, y, 1.0)

  (value, parts), (dz, dpsi) = jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))(
    z, head_params
  )
  assert np.isfinite(value) and np.isfinite(parts["loss/reg"])
  assert np.all(np.isfinite(dz)) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(dpsi))
  # The exact value, lse(s) - lse(s_{j≠ŷ}), in float64 from the head's logits.
  s = np.asarray(head(heads_lib.pool_features(z)), np.float64)[:, 0]
  lse = lambda a: a.max(-1) + np.log(np.exp(a - a.max(-1, keepdims=True)).sum(-1))
  np.testing.assert_allclose(parts["loss/reg"], (lse(s) - lse(s[:, 1:])).mean(), rtol=1e-5, atol=1e-6)
  if target_logit > 0:
    assert parts["loss/reg"] > 50  # the penalty is large, not clipped to something harmless
    assert float(jnp.abs(dz).sum()) > 0  # and it still pushes the features
    # The naive form is what this guards against: in float32, 1 - p̂ is 0.
    p = np.asarray(jax.nn.softmax(jnp.asarray(s, jnp.float32))[:, 0])
    assert np.any(1 - p == 0)


# ---------------------------------------------------------------------------------------------------
# Label smoothing (L_class only)
# ---------------------------------------------------------------------------------------------------


def test_label_smoothing_is_cross_entropy_against_smoothed_one_hot_targets():
  logits = jax.random.normal(jax.random.key(0), (8, 5)) * 3
  labels = jax.random.randint(jax.random.key(1), (8,), 0, 5)
  s = np.asarray(logits, np.float64)
  log_p = s - s.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  for alpha in (0.0, 0.1, 0.5):
    targets = (1 - alpha) * np.eye(5)[np.asarray(labels)] + alpha / 5
    want = -(targets * log_p).sum(-1)
    np.testing.assert_allclose(routing.cross_entropy(logits, labels, alpha), want, rtol=1e-5)
    got_bf16 = routing.cross_entropy(logits.astype(jnp.bfloat16), labels, alpha)
    assert got_bf16.dtype == jnp.float32

  # In routed_losses it smooths L_class only: random labels and probes keep their plain CE.
  heads = _heads()
  z = jax.random.normal(jax.random.key(2), (8, 2, 2, 8))
  kw = dict(
    class_logits=logits,
    features={"block": z},
    labels=labels,
    rlp_labels=jax.random.randint(jax.random.key(3), (8, 1), 0, 10),
    heads=heads,
    probes=heads_lib.LayerHeads({"block": 8}, 5, 1, norm=False, hidden_dim=0, rngs=nnx.Rngs(1)),
    reg_layers=("block",),
    reg_lambda=1.0,
  )
  _, plain = routing.routed_losses(**kw)
  _, smoothed = routing.routed_losses(**kw, label_smoothing=0.1)
  np.testing.assert_allclose(
    smoothed["loss/class"], routing.cross_entropy(logits, labels, 0.1).mean(), rtol=1e-6
  )
  assert smoothed["loss/class"] != plain["loss/class"]
  for k in ("loss/rnd", "loss/reg", "loss/probe"):
    assert smoothed[k] == plain[k], k


def test_train_step_applies_label_smoothing_to_the_class_loss_only(tiny_config):
  tiny_config.optimizer.warmup_epochs = 0.0  # the first step's learning rate is not 0
  with jax.default_prng_impl("rbg"):  # see test_each_loss_reaches_exactly_its_parameters
    experiment, state = experiment_lib.build(tiny_config)
  smoothed_config = tiny_config.copy_and_resolve_references()
  smoothed_config.label_smoothing = 0.2
  batch = experiment_lib.device_batch(
    experiment, next(input_pipeline.train_batches(tiny_config, experiment.info, 0))
  )
  copy = jax.tree.map(jnp.copy, state)  # the step donates its input state
  plain = jax.device_get(steps.make_train_step(experiment)(state, batch))
  smoothed = jax.device_get(
    steps.make_train_step(dataclasses.replace(experiment, config=smoothed_config))(copy, batch)
  )
  assert smoothed.loss_sums["loss/class"] != plain.loss_sums["loss/class"]
  for k in ("loss/rnd", "loss/probe"):
    np.testing.assert_array_equal(smoothed.loss_sums[k], plain.loss_sums[k])
  # The backbone learns from the smoothed targets; the heads and probes from what they did before.
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), smoothed.params["model"], plain.params["model"])
  assert any(jax.tree.leaves(moved))
  for group in ("rlp", "probes"):
    same = jax.tree.map(
      lambda a, b: np.allclose(a, b, rtol=1e-6, atol=1e-7), smoothed.params[group], plain.params[group]
    )
    assert all(jax.tree.leaves(same)), group


# ---------------------------------------------------------------------------------------------------
# Gradient routing on a real model: each loss alone reaches exactly its parameter group.
# ---------------------------------------------------------------------------------------------------

LOSSES = ("loss/class", "loss/rnd", "loss/reg", "loss/probe")


def _groups(grads):
  """Split the gradient tree into docs/design.md §1's groups: θ (backbone), φ (class head), ψ, probes."""
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
  # RBG keys: the same initializers, without compiling threefry for every parameter shape (which is most
  # of a WRN's build time on CPU); which random bits the parameters get is irrelevant to the routing.
  with jax.default_prng_impl("rbg"):
    experiment, state = experiment_lib.build(config)
  batch = next(input_pipeline.train_batches(config, experiment.info, epoch=0))
  batch = {k: jnp.asarray(batch[k]) for k in ("image", "label", "rlp_labels")}

  def losses(params):
    logits, feats, _ = models.apply(
      experiment.model_def,
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
      heads=nnx.merge(experiment.heads_def, params["rlp"]),
      probes=nnx.merge(experiment.probes_def, params["probes"]),
      reg_layers=experiment.reg_layers,
      reg_lambda=config.rlp.reg_lambda,
    )
    return jnp.stack([parts[name] for name in LOSSES])

  @jax.jit
  def per_loss_grads(params):
    """Row i: the gradient of LOSSES[i] alone — one forward pass, one (vmapped) backward pass."""
    _, vjp = jax.vjp(losses, params)
    return jax.vmap(vjp)(jnp.eye(len(LOSSES)))[0]

  grads = per_loss_grads(state.params)
  expected = {
    "loss/class": {"theta", "phi"},
    "loss/rnd": {"psi"},
    "loss/reg": {"theta"},
    "loss/probe": {"probes"},
  }
  for i, name in enumerate(LOSSES):
    groups = _groups(jax.tree.map(lambda g: g[i], grads))
    moved = {g for g, tree in groups.items() if _norm(tree) > 0}
    assert moved == expected[name], (name, moved)
    # Every head's parameters learn from L_rnd (no head silently detached).
    if name == "loss/rnd":
      assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(groups["psi"]))


def test_label_chunk_in_training_equals_full_logits(tiny_config):
  config = tiny_config
  config.rlp.num_labels, config.rlp.reg_lambda = 30, 0.5

  def run(chunk):
    config.rlp.label_chunk = chunk
    with jax.default_prng_impl("rbg"):  # see test_each_loss_reaches_exactly_its_parameters
      experiment, state = experiment_lib.build(config)
    step = steps.make_train_step(experiment)
    for batch in itertools.islice(input_pipeline.train_batches(config, experiment.info, 0), 3):
      state = step(state, experiment_lib.device_batch(experiment, batch))
    return experiment, jax.device_get(state)

  experiment, chunked = run(8)  # 30 labels padded to 32, in blocks of 8
  _, full = run(0)
  assert (
    experiment.label_multiple == 8 and chunked.params["rlp"]["layers"]["pre_logits"]["kernel"].shape[-1] == 32
  )
  np.testing.assert_allclose(chunked.loss_sums["loss/rnd"], full.loss_sums["loss/rnd"], rtol=1e-5)
  np.testing.assert_allclose(chunked.loss_sums["loss/reg"], full.loss_sums["loss/reg"], rtol=1e-5)
  same = jax.tree.map(
    lambda a, b: np.allclose(a, b, rtol=1e-4, atol=1e-6), chunked.params["model"], full.params["model"]
  )
  assert all(jax.tree.leaves(same))
