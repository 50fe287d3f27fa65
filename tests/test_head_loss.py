"""head_loss.head_stats equals autodiff of the full logits, in value and gradient, chunked or not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlp_jax.heads import head_loss, label_axis


def _problem(b=32, h=2, d=8, n=96, valid=90, per_head=False, seed=0):
  keys = jax.random.split(jax.random.key(seed), 6)
  x = jax.random.normal(keys[0], (b, h, d) if per_head else (b, d))
  x = x.at[0].multiply(300.0)  # a saturated row: p_y ≈ 1 or ≈ 0
  w, bias = jax.random.normal(keys[1], (h, d, n)), jax.random.normal(keys[2], (h, n))
  y = jax.random.randint(keys[3], (b, h), 0, valid)
  # A quarter of the rows labelled with their argmax, so accuracy is neither 0 nor 1.
  s = label_axis.mask_padding(label_axis.dense(x, w, bias), valid)
  y = y.at[: b // 4].set(jnp.argmax(s[: b // 4], -1))
  # Arbitrary cotangents for (ce, log1m): every combination of both terms must be right.
  g_ce, g_l1m = jax.random.normal(keys[4], (b, h)), jax.random.normal(keys[5], (b, h))
  return x, w, bias, y, g_ce, g_l1m


def reference(x, w, bias, y, valid):
  """The definitions, by plain autodiff of the full (B, H, n) logits: optax's CE; log(1 - p_y) as the
  log-sum-exp of the other labels minus that of all labels (stable as p_y → 1); argmax == y."""
  s = label_axis.mask_padding(label_axis.dense(x, w, bias), valid)
  ce = optax.softmax_cross_entropy_with_integer_labels(s, y)
  others = jnp.where(jax.nn.one_hot(y, s.shape[-1], dtype=bool), -jnp.inf, s)
  log1m = jax.nn.logsumexp(others, -1) - jax.nn.logsumexp(s, -1)
  return ce, log1m, jnp.argmax(s, -1) == y


def value_and_grads(fn, argnums=(0, 1, 2)):
  """jit of ``(inputs..., g_ce, g_l1m) -> ((ce, log1m, correct), grads of Σ g_ce·ce + g_l1m·log1m)``.

  The cotangents are arguments, so one compilation serves every combination of them.
  """

  def weighted(*args):
    *inputs, g_ce, g_l1m = args
    ce, log1m, correct = fn(*inputs)
    return (g_ce * ce).sum() + (g_l1m * log1m).sum(), (ce, log1m, correct)

  grad = jax.value_and_grad(weighted, argnums=argnums, has_aux=True)
  return jax.jit(lambda *args: (lambda out, g: (out[1], g))(*grad(*args)))


def test_reference_is_the_definition_where_the_naive_form_is_accurate():
  """The reference itself, in float64 on unsaturated rows: CE = -log p_y, log1m = log(1 - p_y)."""
  x, w, bias, y, *_ = _problem()
  ce, log1m, correct = reference(x, w, bias, y, 90)
  s = np.asarray(label_axis.mask_padding(label_axis.dense(x, w, bias), 90), np.float64)[1:]
  p = np.exp(s - s.max(-1, keepdims=True))
  p_y = np.take_along_axis(p / p.sum(-1, keepdims=True), np.asarray(y)[1:, :, None], -1)[..., 0]
  np.testing.assert_allclose(ce[1:], -np.log(p_y), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(log1m[1:], np.log1p(-p_y), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(correct[1:], s.argmax(-1) == np.asarray(y)[1:])


@pytest.mark.parametrize("chunk", [0, 16, 96])
@pytest.mark.parametrize("per_head", [False, True])
def test_values_and_gradients_equal_autodiff_of_full_logits(chunk, per_head):
  valid = 90  # 6 padded labels: never predicted, no probability mass
  x, w, bias, y, g_ce, g_l1m = _problem(valid=valid, per_head=per_head)
  ours = value_and_grads(lambda *a: head_loss.head_stats(*a, y, num_valid=valid, label_chunk=chunk))
  ref = value_and_grads(lambda *a: reference(*a, y, valid))
  zeros = jnp.zeros_like(g_ce)
  # Both cotangents (their sum's per-row scale), and each alone: L_rnd's ce only (λ = 0: log1m is
  # detached) and L_reg's log1m only.
  for k, cts in enumerate(((g_ce, g_l1m), (g_ce, zeros), (zeros, g_l1m))):
    (got, grads), (want, want_grads) = ours(x, w, bias, *cts), ref(x, w, bias, *cts)
    if k == 0:
      for a, e in zip(got, want):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=1e-5, atol=1e-4)
      assert np.asarray(got[2]).any() and not np.asarray(got[2]).all()
    for a, e in zip(grads, want_grads):
      assert np.all(np.isfinite(a))
      np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)
    # Padded labels get no gradient: their weights stay what they were initialized to (zeros).
    assert float(jnp.abs(grads[1][..., valid:]).max()) == 0.0


@pytest.mark.parametrize("chunk", [0, 16])
@pytest.mark.parametrize("per_head", [False, True])
def test_log1m_inputs_route_log1m_and_ce_through_separate_sets(chunk, per_head):
  """With ``log1m_inputs``, ce is differentiated through the first set and log1m through the second —
  each exactly as autodiff of its own statistic — from one evaluation (routed_losses' L_rnd / L_reg)."""
  valid = 90
  x, w, bias, y, g_ce, g_l1m = _problem(valid=valid, per_head=per_head, seed=2)
  split = value_and_grads(
    lambda a, b: head_loss.head_stats(*a, y, log1m_inputs=b, num_valid=valid, label_chunk=chunk),
    argnums=(0, 1),
  )
  got, (grad_a, grad_b) = split((x, w, bias), (x, w, bias), g_ce, g_l1m)
  for a, e in zip(got, head_loss.head_stats(x, w, bias, y, num_valid=valid)):
    np.testing.assert_array_equal(a, e) if chunk == 0 else np.testing.assert_allclose(a, e, rtol=1e-5)

  ref = value_and_grads(lambda *a: reference(*a, y, valid))
  zeros = jnp.zeros_like(g_ce)
  for got_set, (_, want_set) in (
    (grad_a, ref(x, w, bias, g_ce, zeros)),
    (grad_b, ref(x, w, bias, zeros, g_l1m)),
  ):
    for a, e in zip(got_set, want_set):
      np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)


def test_saturated_head_has_finite_exact_gradients():
  """s_y = 1e4: p_y rounds to 1 in float32; log(1 - p_y) and its gradient stay finite and exact."""
  n = 8
  x = jnp.eye(n)[:2]  # (2, 8): row b selects logit b
  w = jnp.zeros((1, n, n)).at[0].set(jnp.eye(n) * 1e4)
  bias = jnp.zeros((1, n))
  y = jnp.array([[0], [1]])
  g_l1m = -jnp.ones((2, 1))  # L_reg = -log1m
  (ce, log1m, correct), grads = value_and_grads(lambda *a: head_loss.head_stats(*a, y))(
    x, w, bias, jnp.zeros((2, 1)), g_l1m
  )
  assert np.all(np.isfinite(log1m)) and np.all(log1m < -1e3) and np.all(correct)
  _, want = value_and_grads(lambda *a: reference(*a, y, n))(x, w, bias, jnp.zeros((2, 1)), g_l1m)
  for a, e in zip(grads, want):
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(grads[0]).sum()) > 0


def test_chunked_needs_less_memory_than_one_logit_matrix():
  """The point of chunking: the (B, H, n) logits are never materialized whole, forward or backward."""
  b, h, d, n, valid = 64, 2, 16, 4096, 4000
  x, w, bias, y, g_ce, g_l1m = _problem(b, h, d, n, valid)

  def loss(chunk):
    stats = lambda *a: head_loss.head_stats(*a, y, num_valid=valid, label_chunk=chunk)
    return lambda *a: (g_ce * stats(*a)[0]).sum() + (g_l1m * stats(*a)[1]).sum()

  temp = [
    jax.jit(jax.grad(loss(c), argnums=(0, 1, 2)))
    .lower(x, w, bias)
    .compile()
    .memory_analysis()
    .temp_size_in_bytes
    for c in (256, 0)
  ]
  logits_bytes = b * h * n * 4
  assert temp[1] >= logits_bytes > temp[0], temp


def test_chunk_must_divide_the_labels():
  x, w, bias, y, *_ = _problem()
  with pytest.raises(ValueError, match="label_chunk=7 must divide"):
    head_loss.head_stats(x, w, bias, y, label_chunk=7)
