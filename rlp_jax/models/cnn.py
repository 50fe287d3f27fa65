"""Plain VGG-style convolutional classifier for 1-D or 2-D spatial inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlp_jax.infra.errors import UserError
from rlp_jax.models.sow import sow_intermediate


def pool_window(spatial: tuple[int, ...]) -> tuple[int, ...]:
  """2 along every spatial dim that can still be halved, 1 elsewhere.

  Lets a deep CNN run on small inputs (e.g. 8x8 with depth 4): once a dim
  reaches 1 it stops pooling instead of collapsing to size 0.
  """
  return tuple(2 if s >= 2 else 1 for s in spatial)


class CNN(nnx.Module):
  """``depth`` x (Conv3-ReLU-Conv3-ReLU-MaxPool2), GAP, Dropout, class head.

  Channels start at ``width`` and double every block. Sows ``block_i`` (the
  pooled block output, (B, *spatial, C)) and ``pre_logits`` ((B, C), the
  globally pooled features before the dropout in front of ``head``, so the RLP
  heads and L_reg read the representation, not one dropout draw of it;
  ``features_after_dropout=True`` sows the dropped-out ones, docs/design.md §7).
  """

  def __init__(
    self,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: int,
    depth: int,
    dropout: float = 0.0,
    features_after_dropout: bool = False,
    rngs: nnx.Rngs,
  ):
    if depth < 1:
      raise UserError(f"CNN depth must be >= 1, got {depth}.")
    kernel = (3,) * (len(input_shape) - 1)
    channels = [input_shape[-1]] + [width * 2**i for i in range(depth)]
    self.convs = nnx.List(
      [
        nnx.List(
          [
            nnx.Conv(c_in, c_out, kernel, padding="SAME", rngs=rngs),
            nnx.Conv(c_out, c_out, kernel, padding="SAME", rngs=rngs),
          ]
        )
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
      ]
    )
    # No rngs: the dropout key is passed per call (state = Params only).
    self.dropout = nnx.Dropout(dropout)
    self.features_after_dropout = features_after_dropout
    self.head = nnx.Linear(channels[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Return float32 logits (B, num_classes); ``train`` enables dropout."""
    x = x.astype(jnp.float32)
    for i, (conv_a, conv_b) in enumerate(self.convs, start=1):
      x = nnx.relu(conv_b(nnx.relu(conv_a(x))))
      window = pool_window(x.shape[1:-1])
      if any(w > 1 for w in window):
        x = nnx.max_pool(x, window, strides=window, padding="VALID")
      sow_intermediate(self, f"block_{i}", x)
    x = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
    if not self.features_after_dropout:
      sow_intermediate(self, "pre_logits", x)
    x = self.dropout(x, deterministic=not train, rngs=rngs)
    if self.features_after_dropout:
      sow_intermediate(self, "pre_logits", x)
    return self.head(x)
