"""The fused Pallas kernels (interpret mode on CPU) equal head_loss's XLA path in value and both gradients;
they lower for CUDA through Triton at ViT-B's width."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlp_jax.heads import head_loss, head_loss_pallas, label_axis

NV = 52  # valid labels of the n = 60 below: 8 padding labels inside the kernel's n, then 4 padded to tiles


def _problem(per_head, b=6, h=2, d=12, n=60, seed=0, bias_shift=0.0):
  keys = jax.random.split(jax.random.key(seed), 7)
  x = jax.random.normal(keys[0], (b, h, d) if per_head else (b, d))
  x = x.at[0].multiply(30.0)  # a saturated row: p_y ≈ 1 or ≈ 0
  w, bias = 0.5 * jax.random.normal(keys[1], (h, d, n)), jax.random.normal(keys[2], (h, n)) + bias_shift
  y = jax.random.randint(keys[3], (b, h), 0, NV)
  s = label_axis.mask_padding(label_axis.dense(x, w, bias), NV)
  y = y.at[:3].set(jnp.argmax(s[:3], -1))  # some rows correct, so accuracy is neither 0 nor 1
  return (x, w, bias), y, jax.random.normal(keys[4], (b, h)), jax.random.normal(keys[5], (b, h))


def _value_and_grads(impl, y, split):
  """(ce, log1m, correct) and the gradients of Σ g_ce·ce + g_l1m·log1m: through one input set, or with
  log1m through a second (routing.routed_losses' L_rnd / L_reg routes)."""

  def loss(inputs, inputs2, g_ce, g_l1m):
    ce, log1m, correct = head_loss.head_stats(
      *inputs, y, log1m_inputs=inputs2 if split else None, num_valid=NV, loss_kernel=impl
    )
    return (g_ce * ce).sum() + (g_l1m * log1m).sum(), (ce, log1m, correct)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


# Shared x with one input set (λ = 0's route: the per-row scales summed), and per-head x with log1m through a
# second set (λ > 0: one scale per set, two dW accumulators in the kernel).
# bias_shift: every logit near 100, so exp(s) of a padded row overflows unless the kernel keeps it out.
@pytest.mark.parametrize(
  "per_head,split,bias_shift", [(False, False, 0.0), (True, True, 0.0), (True, True, 100.0)]
)
def test_pallas_equals_the_xla_path(monkeypatch, per_head, split, bias_shift):
  # Tiles that divide neither B = 6, n = 60 nor D = 12 (padded rows, labels and features), two D blocks of
  # two K slices each, and 8 padding labels inside n (num_valid = 52).
  for name, value in dict(BLOCK_B=4, BLOCK_N=16, BLOCK_K=4, BLOCK_D=8, MIN_TILE=1).items():
    monkeypatch.setattr(head_loss_pallas, name, value)
  inputs, y, g_ce, g_l1m = _problem(per_head, bias_shift=bias_shift)
  lay = head_loss_pallas._Layout(
    *inputs, y, label_axis.Spec(NV, jnp.float32, 0, per_head, None, True), None, None
  )
  assert (lay.bp, lay.np, lay.dp, lay.dp // lay.bd, lay.bd // lay.bk) == (8, 64, 16, 2, 2)
  (_, got), got_g = _value_and_grads("pallas", y, split)(inputs, inputs, g_ce, g_l1m)
  (_, want), want_g = _value_and_grads("xla", y, split)(inputs, inputs, g_ce, g_l1m)
  np.testing.assert_array_equal(got[2], want[2])
  assert np.asarray(got[2]).any() and not np.asarray(got[2]).all()
  for a, e in zip(got[:2], want[:2]):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
  for a, e in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    assert np.isfinite(np.asarray(a)).all()
    scale = max(1.0, float(jnp.abs(e).max()))
    np.testing.assert_allclose(a / scale, e / scale, rtol=1e-5, atol=1e-5)
  if split:  # each route's gradient is its own: ce's through the first set, log1m's through the second
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(got_g))


def test_pallas_refuses_a_sharded_label_axis():
  from configs import digits
  from rlp_jax.infra import configuration

  config = digits.get_config("tiny")
  config.rlp.loss_kernel = "pallas"
  configuration.validate(config)  # one label shard: accepted
  config.mesh.model = 2  # refused by the config check, before any workdir or trace
  with pytest.raises(
    head_loss.UserError, match=r"^config\.rlp\.loss_kernel: 'pallas' runs on one label shard"
  ):
    configuration.validate(config)
  inputs, y, *_ = _problem(False)
  fake = type("Mesh", (), {"shape": {"data": 1, "model": 2}})()  # and by head_stats, for direct callers
  with pytest.raises(head_loss.UserError, match="loss_kernel='pallas'"):
    head_loss.head_stats(*inputs, y, num_valid=NV, loss_kernel="pallas", mesh=fake)


@pytest.mark.parametrize("per_head", [False, True])
def test_pallas_lowers_for_cuda_at_vit_b_width(monkeypatch, per_head):
  """Value and both gradients at D = 768 (not a power of two) and n = 1000 lower for CUDA through Triton, on
  this CPU (Triton's MLIR; no GPU needed): every block shape is a power of two and Mosaic GPU is not used.
  Shared memory, registers and time are not checked here — only a GPU run measures those."""
  monkeypatch.setattr(head_loss_pallas, "INTERPRET", False)
  b, h, d, n = 48, 2, 768, 1000
  f32 = jnp.float32
  x = jax.ShapeDtypeStruct((b, h, d) if per_head else (b, d), f32)
  w, bias, y = (jax.ShapeDtypeStruct(s, t) for s, t in (((h, d, n), f32), ((h, n), f32), ((b, h), jnp.int32)))

  def loss(x, w, bias, y):
    ce, log1m, _ = head_loss.head_stats(
      x, w, bias, y, log1m_inputs=(x, w, bias), num_valid=990, loss_kernel="pallas"
    )
    return ce.sum() + log1m.sum()

  try:
    traced = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(x, w, bias, y)
    text = traced.lower(lowering_platforms=("cuda",)).as_text()
  except ImportError as e:  # a jaxlib built without the Triton bindings
    pytest.skip(f"no Triton lowering in this jaxlib: {e}")
  assert text.count("custom_call @__gpu$xla.gpu.triton") == 3  # forward, dx and dW kernels


def test_config_refuses_an_unknown_loss_kernel():
  from configs import digits
  from rlp_jax.infra import configuration

  config = digits.get_config("tiny")
  configuration.validate(config)  # the default, 'xla', passes
  config.rlp.loss_kernel = "triton"
  with pytest.raises(head_loss.UserError, match=r"^config\.rlp\.loss_kernel: must be 'xla' or 'pallas'"):
    configuration.validate(config)


def test_the_untuned_kernel_warns_once_until_a_gpu_has_timed_it(monkeypatch):
  inputs, y, *_ = _problem(False)
  head_loss._warn_untuned_once.cache_clear()
  with pytest.warns(UserWarning, match="not been timed on a GPU") as seen:
    for _ in range(3):
      head_loss.head_stats(*inputs, y, num_valid=NV, loss_kernel="pallas")
  assert len([w for w in seen if "timed" in str(w.message)]) == 1
  head_loss._warn_untuned_once.cache_clear()
  monkeypatch.setattr(head_loss_pallas, "TUNED", True)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    head_loss.head_stats(*inputs, y, num_valid=NV, loss_kernel="pallas")
