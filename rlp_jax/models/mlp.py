"""Multi-layer perceptron classifier with named, capturable intermediates."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from rlp_jax.infra.errors import UserError
from rlp_jax.models.sow import sow_intermediate


class MLP(nnx.Module):
  """``depth`` x (Dense(width) -> ReLU -> Dropout), then a linear class head.

  Sows ``block_1 .. block_depth`` (each block's output, shape (B, width)) and
  ``pre_logits`` (the last hidden layer, what ``head`` sees), all taken before their
  dropout: the RLP heads and L_reg read the representation, not one dropout draw of it
  (``features_after_dropout=True`` sows the dropped-out ones, docs/design.md §7).
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
      raise UserError(f"MLP depth must be >= 1, got {depth}.")
    in_features = math.prod(input_shape)
    self.layers = nnx.List(
      [nnx.Linear(in_features if i == 0 else width, width, rngs=rngs) for i in range(depth)]
    )
    # No rngs: the dropout key is supplied per call, keeping model state to
    # Params only (training jits over nnx.split(model, Param, BatchStat)).
    self.dropout = nnx.Dropout(dropout)
    self.features_after_dropout = features_after_dropout
    self.head = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Return float32 logits (B, num_classes); ``train`` enables dropout."""
    x = jnp.reshape(x, (x.shape[0], -1)).astype(jnp.float32)
    for i, layer in enumerate(self.layers, start=1):
      x = nnx.relu(layer(x))
      dropped = self.dropout(x, deterministic=not train, rngs=rngs)
      features = dropped if self.features_after_dropout else x
      sow_intermediate(self, f"block_{i}", features)
      if i == len(self.layers):
        sow_intermediate(self, "pre_logits", features)
      x = dropped
    return self.head(x)
