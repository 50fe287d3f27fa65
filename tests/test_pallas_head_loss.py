"""The fused Pallas kernels (interpret mode on CPU) equal head_loss's XLA path in value and both gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlp_jax.heads import head_loss, pallas_head_loss


def _problem(per_head, b=8, h=2, d=16, n=64, seed=0):
  keys = jax.random.split(jax.random.key(seed), 7)
  x = jax.random.normal(keys[0], (b, h, d) if per_head else (b, d))
  x = x.at[0].multiply(30.0)  # a saturated row: p_y ≈ 1 or ≈ 0
  w, bias = 0.5 * jax.random.normal(keys[1], (h, d, n)), jax.random.normal(keys[2], (h, n))
  y = jax.random.randint(keys[3], (b, h), 0, 60)
  s = head_loss.mask_padding(head_loss.dense(x, w, bias), 60)
  y = y.at[:3].set(jnp.argmax(s[:3], -1))  # some rows correct, so accuracy is neither 0 nor 1
  return (x, w, bias), y, jax.random.normal(keys[4], (b, h)), jax.random.normal(keys[5], (b, h))


def _value_and_grads(impl, y, split):
  """(ce, log1m, correct) and the gradients of Σ g_ce·ce + g_l1m·log1m: through one input set, or with
  log1m through a second (routing.routed_losses' L_rnd / L_reg routes)."""

  def loss(inputs, inputs2, g_ce, g_l1m):
    ce, log1m, correct = head_loss.head_stats(
      *inputs, y, log1m_inputs=inputs2 if split else None, num_valid=60, impl=impl
    )
    return (g_ce * ce).sum() + (g_l1m * log1m).sum(), (ce, log1m, correct)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


# Shared x with one input set (λ = 0's route: the per-row scales summed), and per-head x with log1m through a
# second set (λ > 0: one scale per set, two dW accumulators in the kernel).
@pytest.mark.parametrize("per_head,split", [(False, False), (True, True)])
def test_pallas_equals_the_xla_path(monkeypatch, per_head, split):
  # Tiles that divide neither B = 8 nor n = 64 (padded rows and labels), and 4 padded labels (num_valid=60).
  monkeypatch.setattr(pallas_head_loss, "BLOCK_B", 3)
  monkeypatch.setattr(pallas_head_loss, "BLOCK_N", 24)
  inputs, y, g_ce, g_l1m = _problem(per_head)
  (_, got), got_g = _value_and_grads("pallas", y, split)(inputs, inputs, g_ce, g_l1m)
  (_, want), want_g = _value_and_grads("xla", y, split)(inputs, inputs, g_ce, g_l1m)
  np.testing.assert_array_equal(got[2], want[2])
  assert np.asarray(got[2]).any() and not np.asarray(got[2]).all()
  for a, e in zip(got[:2], want[:2]):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
  for a, e in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    scale = max(1.0, float(jnp.abs(e).max()))
    np.testing.assert_allclose(a / scale, e / scale, rtol=1e-5, atol=1e-5)
  if split:  # each route's gradient is its own: ce's through the first set, log1m's through the second
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(got_g))


def test_pallas_refuses_a_sharded_label_axis():
  inputs, y, *_ = _problem(False)
  fake = type("Mesh", (), {"shape": {"data": 1, "model": 2}})()  # refused before the mesh is used
  with pytest.raises(head_loss.UserError, match="loss_kernel='pallas'"):
    head_loss.head_stats(*inputs, y, num_valid=60, impl="pallas", mesh=fake)


def test_config_refuses_an_unknown_loss_kernel():
  from configs import digits
  from rlp_jax.infra import configuration

  config = digits.get_config("tiny")
  configuration.validate(config)  # the default, 'xla', passes
  config.rlp.loss_kernel = "triton"
  with pytest.raises(head_loss.UserError, match=r"^config\.rlp\.loss_kernel: must be 'xla' or 'pallas'"):
    configuration.validate(config)
