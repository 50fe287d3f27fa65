"""Matmul/convolution FLOPs counted from the jaxpr: exact on known programs, close to XLA:CPU's count."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rlp_jax.heads import head_loss
from rlp_jax.perf import flops


def test_matmul_einsum_and_scan_counts_are_exact():
  x, w = jnp.ones((8, 16)), jnp.ones((16, 32))
  assert flops.count(jnp.dot, x, w) == 2 * 8 * 16 * 32
  a, b = jnp.ones((3, 8, 16)), jnp.ones((3, 16, 5))
  assert flops.count(lambda a, b: jnp.einsum("hbd,hde->hbe", a, b), a, b) == 2 * 3 * 8 * 16 * 5

  def looped(x, w):
    return jax.lax.scan(lambda c, _: (c @ w[:, :16], None), x, None, length=7)[0]

  assert flops.count(looped, x, w) == 7 * 2 * 8 * 16 * 16
  # The backward pass of a matmul is two more matmuls...
  mm = 2 * 8 * 16 * 32
  assert flops.count(jax.grad(lambda x, w: ((x @ w) ** 2).sum(), argnums=(0, 1)), x, w) == 3 * mm
  # ... and a forward product nothing reads is dead code, as in XLA; a repeated one counts once.
  assert flops.count(jax.grad(lambda x, w: (x @ w).sum(), argnums=(0, 1)), x, w) == 2 * mm
  assert flops.count(lambda x, w: (x @ w) + jax.lax.stop_gradient(x @ w), x, w) == mm


def test_loop_carried_values_nothing_reads_are_not_counted():
  """XLA drops a while loop's carried value that is read neither after the loop nor by live work in its
  body; so does the count — but not a carry that a read carry depends on."""
  x, w = jnp.ones((8, 16)), jnp.ones((16, 16))
  mm = 2 * 8 * 16 * 16

  def loop(x, w):
    def body(carry, _):
      a, b, c = carry
      return (a @ w, b @ w, a + c @ w), None  # b and c feed only themselves; c reads a

    return jax.lax.scan(body, (x, x, x), None, length=5)[0]

  a_only = lambda x, w: loop(x, w)[0]
  b_only = lambda x, w: loop(x, w)[1]
  c_only = lambda x, w: loop(x, w)[2]
  assert flops.count(a_only, x, w) == flops.count(b_only, x, w) == 5 * mm
  assert flops.count(c_only, x, w) == 5 * 2 * mm  # c reads a: both carries live
  assert flops.count(loop, x, w) == 5 * 3 * mm


def test_convolution_count_is_exact():
  x, k = jnp.ones((2, 10, 10, 3)), jnp.ones((3, 3, 3, 4))  # NHWC, HWIO

  def conv(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  assert flops.count(conv, x, k) == 2 * (2 * 10 * 10 * 4) * (3 * 3 * 3)


def test_agrees_with_xla_cpu_cost_analysis_on_a_training_gradient():
  """XLA:CPU counts every op (matmuls included, unlike XLA:GPU); on a matmul-heavy gradient both agree."""
  keys = jax.random.split(jax.random.key(0), 4)
  x, w1 = jax.random.normal(keys[0], (64, 256)), jax.random.normal(keys[1], (256, 512))
  w2, y = jax.random.normal(keys[2], (512, 1000)), jax.random.randint(keys[3], (64, 1), 0, 1000)

  def loss(x, w1, w2):
    ce, log1m, _ = head_loss.head_stats(jax.nn.relu(x @ w1), w2[None], jnp.zeros((1, 1000)), y)
    return ce.mean() - log1m.mean()

  grad = jax.grad(loss, argnums=(0, 1, 2))
  counted = flops.count(grad, x, w1, w2)
  xla = jax.jit(grad).lower(x, w1, w2).compile().cost_analysis()
  xla = (xla[0] if isinstance(xla, list | tuple) else xla)["flops"]
  assert counted <= xla
  np.testing.assert_allclose(counted, xla, rtol=0.05)
