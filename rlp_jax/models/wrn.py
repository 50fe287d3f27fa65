"""Wide residual network WRN-d-w (Zagoruyko & Komodakis, 2016).

Follows the authors' original Torch code: pre-activation basic blocks,
bias-free convolutions with He-normal init in ``fan_out`` mode (their "MSR
init" ``normal(0, sqrt(2 / (k*k*out_channels)))``), dropout right before a
block's second conv, and a 1x1 shortcut conv applied to the *activated* input
when the block changes shape. BatchNorm momentum 0.9 (flax convention) equals
Torch's 0.1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlp_jax.infra.errors import UserError
from rlp_jax.models.sow import sow_intermediate

_HE_FAN_OUT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
_BN_MOMENTUM = 0.9


def _conv(c_in: int, c_out: int, kernel: tuple[int, ...], strides, rngs) -> nnx.Conv:
  return nnx.Conv(
    c_in,
    c_out,
    kernel,
    strides=strides,
    padding="SAME",
    use_bias=False,
    kernel_init=_HE_FAN_OUT,
    rngs=rngs,
  )


def _bn(c: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(c, momentum=_BN_MOMENTUM, rngs=rngs)


class BasicBlock(nnx.Module):
  """Pre-activation block: BN-ReLU-Conv3(stride)-BN-ReLU-[Dropout]-Conv3."""

  def __init__(
    self,
    c_in: int,
    c_out: int,
    strides: tuple[int, ...],
    dropout: float,
    rngs: nnx.Rngs,
  ):
    kernel = (3,) * len(strides)
    self.bn1 = _bn(c_in, rngs)
    self.conv1 = _conv(c_in, c_out, kernel, strides, rngs)
    self.bn2 = _bn(c_out, rngs)
    self.conv2 = _conv(c_out, c_out, kernel, (1,) * len(strides), rngs)
    self.dropout = nnx.Dropout(dropout)  # key passed per call, no state
    changes_shape = c_in != c_out or any(s != 1 for s in strides)
    self.shortcut = _conv(c_in, c_out, (1,) * len(strides), strides, rngs) if changes_shape else None

  def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
    o = nnx.relu(self.bn1(x, use_running_average=not train))
    y = self.conv1(o)
    y = nnx.relu(self.bn2(y, use_running_average=not train))
    y = self.conv2(self.dropout(y, deterministic=not train, rngs=rngs))
    return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nnx.Module):
  """WRN-``depth``-``width``: stem conv, 3 groups of (depth-4)/6 blocks, head.

  Group channels are 16w, 32w, 64w with strides 1, 2, 2; a stride of 2 is
  only applied along spatial dims that are still > 1 so 1-D signals (whose
  shape carries a single spatial dim) and tiny images work unchanged. Sows
  ``block_1..block_3`` (each group's output) and ``pre_logits`` (B, 64w).
  """

  def __init__(
    self,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: int,
    depth: int,
    dropout: float = 0.0,
    rngs: nnx.Rngs,
  ):
    if depth < 10 or (depth - 4) % 6 != 0:
      raise UserError(
        f"WRN depth must satisfy (depth - 4) % 6 == 0 and depth >= 10 (e.g. 16, 22, 28), got {depth}."
      )
    blocks_per_group = (depth - 4) // 6
    spatial = list(input_shape[:-1])
    kernel = (3,) * len(spatial)
    self.stem = _conv(input_shape[-1], 16, kernel, (1,) * len(spatial), rngs)
    c_in, groups = 16, []
    for g, stride in enumerate((1, 2, 2)):
      c_out = 16 * width * 2**g
      blocks = []
      for b in range(blocks_per_group):
        strides = tuple(stride if (b == 0 and s > 1) else 1 for s in spatial)
        spatial = [-(-s // st) for s, st in zip(spatial, strides, strict=True)]  # SAME
        blocks.append(BasicBlock(c_in, c_out, strides, dropout, rngs))
        c_in = c_out
      groups.append(nnx.List(blocks))
    self.groups = nnx.List(groups)
    self.bn = _bn(c_in, rngs)
    self.head = nnx.Linear(c_in, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Return float32 logits; ``train`` enables dropout and batch statistics."""
    x = self.stem(x.astype(jnp.float32))
    for g, blocks in enumerate(self.groups, start=1):
      for block in blocks:
        x = block(x, train=train, rngs=rngs)
      sow_intermediate(self, f"block_{g}", x)
    x = nnx.relu(self.bn(x, use_running_average=not train))
    x = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
    sow_intermediate(self, "pre_logits", x)
    return self.head(x)
