"""head_loss.head_stats equals autodiff of the full logits, in value and gradient, chunked or not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlp_jax.heads import head_loss, metrics, routing


def _problem(b=32, h=2, d=8, n=96, valid=90, per_head=False, seed=0):
  keys = jax.random.split(jax.random.key(seed), 6)
  x = jax.random.normal(keys[0], (b, h, d) if per_head else (b, d))
  x = x.at[0].multiply(300.0)  # a saturated row: p_y ≈ 1 or ≈ 0
  w, bias = jax.random.normal(keys[1], (h, d, n)), jax.random.normal(keys[2], (h, n))
  y = jax.random.randint(keys[3], (b, h), 0, valid)
  # A quarter of the rows labelled with their argmax, so accuracy is neither 0 nor 1.
  s = head_loss.mask_padding(head_loss.dense(x, w, bias), valid)
  y = y.at[: b // 4].set(jnp.argmax(s[: b // 4], -1))
  # Arbitrary cotangents for (ce, log1m): every combination of both terms must be right.
  g_ce, g_l1m = jax.random.normal(keys[4], (b, h)), jax.random.normal(keys[5], (b, h))
  return x, w, bias, y, g_ce, g_l1m


def reference(x, w, bias, y, valid):
  """Autodiff of the definitions, from full logits (train.py's numerics)."""
  s = head_loss.mask_padding(head_loss.dense(x, w, bias), valid)
  return routing.cross_entropy(s, y), routing.log1m_softmax(s, y), metrics.head_correct(s, y)


def weighted(fn, g_ce, g_l1m):
  return lambda *a: (lambda ce, l1m, _: (g_ce * ce).sum() + (g_l1m * l1m).sum())(*fn(*a))


@pytest.mark.parametrize("chunk", [0, 16, 96])
@pytest.mark.parametrize("per_head", [False, True])
def test_values_and_gradients_equal_autodiff_of_full_logits(chunk, per_head):
  valid = 90  # 6 padded labels: never predicted, no probability mass
  x, w, bias, y, g_ce, g_l1m = _problem(valid=valid, per_head=per_head)

  def ours(x, w, bias):
    return head_loss.head_stats(x, w, bias, y, num_valid=valid, chunk=chunk)

  def ref(x, w, bias):
    return reference(x, w, bias, y, valid)

  got, want = jax.jit(ours)(x, w, bias), jax.jit(ref)(x, w, bias)
  for a, e in zip(got, want):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=1e-5, atol=1e-4)
  assert np.asarray(got[2]).any() and not np.asarray(got[2]).all()

  grads = [jax.jit(jax.grad(weighted(f, g_ce, g_l1m), argnums=(0, 1, 2))) for f in (ours, ref)]
  for a, e in zip(grads[0](x, w, bias), grads[1](x, w, bias)):
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)
  # Padded labels get no gradient: their weights stay what they were initialized to (zeros).
  dw = grads[0](x, w, bias)[1]
  assert float(jnp.abs(dw[..., valid:]).max()) == 0.0


def test_each_cotangent_alone_matches_autodiff():
  """L_rnd uses only ce's cotangent and L_reg only log1m's: each separately must be exact."""
  x, w, bias, y, g_ce, g_l1m = _problem(seed=1)
  zeros = jnp.zeros_like(g_ce)
  for gc, gl in ((g_ce, zeros), (zeros, g_l1m)):
    grads = [
      jax.grad(weighted(f, gc, gl), argnums=(0, 1, 2))(x, w, bias)
      for f in (
        lambda *a: head_loss.head_stats(*a, y, num_valid=90),
        lambda *a: reference(*a, y, 90),
      )
    ]
    for a, e in zip(*grads):
      np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk", [0, 16])
@pytest.mark.parametrize("per_head", [False, True])
def test_log1m_inputs_route_log1m_and_ce_through_separate_sets(chunk, per_head):
  """With ``log1m_inputs``, ce is differentiated through the first set and log1m through the second —
  each exactly as autodiff of its own statistic — from one evaluation (routed_losses' L_rnd / L_reg)."""
  valid = 90
  x, w, bias, y, g_ce, g_l1m = _problem(valid=valid, per_head=per_head, seed=2)

  def split(a, b):
    return head_loss.head_stats(*a, y, log1m_inputs=b, num_valid=valid, chunk=chunk)

  got = jax.jit(split)((x, w, bias), (x, w, bias))
  for a, e in zip(got, head_loss.head_stats(x, w, bias, y, num_valid=valid)):
    np.testing.assert_array_equal(a, e) if chunk == 0 else np.testing.assert_allclose(a, e, rtol=1e-5)

  grad_a, grad_b = jax.jit(jax.grad(weighted(split, g_ce, g_l1m), argnums=(0, 1)))((x, w, bias), (x, w, bias))
  ref = lambda gc, gl: jax.grad(weighted(lambda *a: reference(*a, y, valid), gc, gl), argnums=(0, 1, 2))
  zeros = jnp.zeros_like(g_ce)
  for got_set, want_set in ((grad_a, ref(g_ce, zeros)(x, w, bias)), (grad_b, ref(zeros, g_l1m)(x, w, bias))):
    for a, e in zip(got_set, want_set):
      np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)


def test_saturated_head_has_finite_exact_gradients():
  """s_y = 1e4: p_y rounds to 1 in float32; log(1 - p_y) and its gradient stay finite and exact."""
  n = 8
  x = jnp.eye(n)[:2]  # (2, 8): row b selects logit b
  w = jnp.zeros((1, n, n)).at[0].set(jnp.eye(n) * 1e4)
  bias = jnp.zeros((1, n))
  y = jnp.array([[0], [1]])
  ce, log1m, correct = head_loss.head_stats(x, w, bias, y)
  assert np.all(np.isfinite(log1m)) and np.all(log1m < -1e3) and np.all(correct)
  grads = jax.grad(lambda x: -head_loss.head_stats(x, w, bias, y)[1].sum())(x)
  want = jax.grad(lambda x: -reference(x, w, bias, y, n)[1].sum())(x)
  assert np.all(np.isfinite(grads))
  np.testing.assert_allclose(grads, want, rtol=1e-5, atol=1e-5)


def test_chunked_needs_less_memory_than_one_logit_matrix():
  """The point of chunking: the (B, H, n) logits are never materialized whole, forward or backward."""
  b, h, d, n, valid = 64, 2, 16, 4096, 4000
  x, w, bias, y, g_ce, g_l1m = _problem(b, h, d, n, valid)

  def loss(chunk):
    return weighted(lambda *a: head_loss.head_stats(*a, y, num_valid=valid, chunk=chunk), g_ce, g_l1m)

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
    head_loss.head_stats(x, w, bias, y, chunk=7)
