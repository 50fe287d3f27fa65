"""RLP heads and class probes: small classifiers that read a layer's pooled features (docs/design.md §1).

``ParallelHeads`` holds ``num_heads`` independent heads over one layer's features (multi-head, A.8);
``LayerHeads`` one of those per named layer. Their initialization is a pure function of
``config.seed`` and the layer name, so online heads, offline heads and a rebuilt run start identical.
The losses and the gradient routing live in ``routing.py``; the numerics of the output layer in
``head_loss.py``.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rlp_jax.heads.label_axis import dense, mask_padding
from rlp_jax.infra import configuration, streams
from rlp_jax.infra.errors import UserError


def pool_features(z: jax.Array, pool: str = "mean") -> jax.Array:
  """(B, ..., C) -> (B, D): what a head reads from a spatial or token map (docs/design.md §1).

  ``pool`` is a resolved pooling, ``configuration.feature_pool``'s: ``mean`` over every position, ``flatten``,
  and for a ViT's (B, 1 + N, D) token maps ``token`` (the class token, position 0) or ``mean_patches`` (the
  N patch tokens). The runs' default ``rlp.pool='classifier'`` is not one: it names ``token`` or ``mean``
  depending on the model, and only the config knows the model.
  Mean pooling rather than flattening because a head on a flattened early conv map would be enormous
  (WRN block_1 on CIFAR: 32·32·64 features × n labels) and would measure the head, not the network.
  """
  if z.ndim == 2:
    return z
  if pool == "mean":
    return z.reshape(z.shape[0], -1, z.shape[-1]).mean(axis=1)
  if pool == "flatten":
    return z.reshape(z.shape[0], -1)
  if pool == "token":
    return z[:, 0]
  if pool == "mean_patches":
    return z[:, 1:].mean(axis=1)
  if pool == "classifier":  # a config value: what it means depends on the model, which is not known here
    raise UserError(
      "config.rlp.pool: 'classifier' is resolved per model (configuration.feature_pool(config)); pass its "
      "result: 'token' for a ViT with a class token, else 'mean'."
    )
  raise UserError(
    f"config.rlp.pool: {pool!r} is not a pooling; use 'mean', 'flatten', 'token' or 'mean_patches'."
  )


class ParallelHeads(nnx.Module):
  """``num_heads`` independent classifiers over the same features, computed as one batched einsum.

  Variants (docs/design.md §1): linear (default); ``norm=True`` puts a LayerNorm (own scale/bias per head)
  before the dense layer, as the paper does for transformer blocks; ``hidden_dim > 0`` adds one ReLU hidden
  layer of that width (A.6). Output logits have shape (B, num_heads, num_labels) and are float32.

  ``dtype`` is the matmuls' input type ('bfloat16' halves their cost on accelerators); parameters,
  accumulation, logits and everything downstream (softmax, losses) stay float32.
  """

  def __init__(
    self,
    in_features: int,
    num_labels: int,
    num_heads: int = 1,
    *,
    norm: bool = False,
    hidden_dim: int = 0,
    dtype: str = "float32",
    num_valid: int | None = None,
    rngs: nnx.Rngs,
  ):
    init = nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
    self.norm = norm
    self.dtype = dtype
    # Labels >= num_valid are padding (so a prime n can be split evenly over devices): their logits
    # are -inf, so they take no probability mass and are never predicted.
    self.num_valid = num_labels if num_valid is None else num_valid
    if norm:
      self.scale = nnx.Param(jnp.ones((num_heads, in_features)))
      self.shift = nnx.Param(jnp.zeros((num_heads, in_features)))
    width = in_features
    if hidden_dim > 0:
      self.hidden = nnx.Param(init(rngs.params(), (num_heads, in_features, hidden_dim)))
      self.hidden_bias = nnx.Param(jnp.zeros((num_heads, hidden_dim)))
      width = hidden_dim
    else:
      self.hidden = None
    # The valid labels' weights are drawn exactly as without padding; padded columns are zeros.
    kernel = init(rngs.params(), (num_heads, width, self.num_valid))
    self.kernel = nnx.Param(jnp.pad(kernel, ((0, 0), (0, 0), (0, num_labels - self.num_valid))))
    self.bias = nnx.Param(jnp.zeros((num_heads, num_labels)))

  def standardize(self, z: jax.Array) -> jax.Array:
    """The parameter-free half of the LayerNorm (identity without ``norm``), in float32.

    Split from ``inputs`` so that routed_losses computes it once, before the stop_gradient: the head's
    two input sets (L_rnd's on sg(u), L_reg's on u) then start from the very same array.
    """
    x = z.astype(jnp.float32)
    if self.norm:
      x = (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-6)
    return x

  def inputs(self, u: jax.Array) -> jax.Array:
    """What the output layer reads, from standardized features u.

    Either u itself (B, D), or per head (B, H, D') after the LayerNorm's scale and shift and / or the hidden
    layer.
    """
    x = u
    if self.norm:
      x = x[:, None, :] * self.scale[None] + self.shift[None]  # (B, H, D)
    if self.hidden is not None:
      x = jax.nn.relu(dense(x, self.hidden[...], self.hidden_bias[...], self.dtype))
    return x

  def __call__(self, z: jax.Array) -> jax.Array:
    x = self.inputs(self.standardize(z))
    return mask_padding(dense(x, self.kernel[...], self.bias[...], self.dtype), self.num_valid)


def norm_layers(config, feature_dims: Mapping[str, int]) -> frozenset[str]:
  """The layers whose heads (and probes) put a LayerNorm before the dense layer.

  These are ``config.rlp.norm_layers``, any of the names the model sows (``feature_dims``' keys), whether or
  not a head reads them.
  """
  return frozenset(configuration.parse_layers(config.rlp.norm_layers, list(feature_dims), "rlp.norm_layers"))


def build_heads(
  config,
  feature_dims: Mapping[str, int],
  layers: Sequence[str],
  num_labels: int,
  *,
  label_multiple: int = 1,
  scale_free: bool = False,
) -> LayerHeads | None:
  """The RLP heads of a run, with their fixed initialization: online and offline heads start identical.

  ``label_multiple``: pad the label axis to a multiple of this (the mesh's ``model`` axis) with masked
  labels, so that any n — ImageNet's prime m = 1,281,167 included — can be sharded evenly.
  ``scale_free``: a LayerNorm before the dense layer on every layer, whatever ``rlp.norm_layers`` says (the
  scale-free offline control, docs/design.md §4); the dense weights are drawn exactly as without it.
  """
  if not layers:
    return None
  padded = -(-num_labels // label_multiple) * label_multiple
  rngs = nnx.Rngs(params=streams.key(config.seed, streams.RLP_HEADS))
  return LayerHeads(
    {k: feature_dims[k] for k in layers},
    padded,
    config.rlp.num_heads,
    norm=True if scale_free else norm_layers(config, feature_dims),
    hidden_dim=config.rlp.hidden_dim,
    dtype=config.rlp.dtype,
    num_valid=num_labels,
    rngs=rngs,
  )


def build_probes(
  config, feature_dims: Mapping[str, int], layers: Sequence[str], num_classes: int
) -> LayerHeads | None:
  """Per-layer linear class probes (Fig. 9)."""
  if not layers:
    return None
  rngs = nnx.Rngs(params=streams.key(config.seed, streams.PROBES))
  norm = norm_layers(config, feature_dims)
  return LayerHeads({k: feature_dims[k] for k in layers}, num_classes, 1, norm=norm, hidden_dim=0, rngs=rngs)


class LayerHeads(nnx.Module):
  """One ``ParallelHeads`` per named layer: the RLP heads (or the class probes) of a whole network.

  ``norm``: True / False for every layer, or a collection of the names of the layers whose heads have a
  LayerNorm (``{"block_1"}``). A string is refused: ``"all"`` or ``"block_1"`` would be read as a collection
  of characters and silently give no layer a LayerNorm (config strings resolve with ``norm_layers``).
  """

  def __init__(
    self,
    feature_dims: Mapping[str, int],
    num_labels: int,
    num_heads: int,
    *,
    norm: bool | Collection[str],
    hidden_dim: int,
    dtype: str = "float32",
    num_valid: int | None = None,
    rngs: nnx.Rngs,
  ):
    if isinstance(norm, str):
      raise TypeError(
        f"LayerHeads(norm={norm!r}): a string is not a collection of layer names; pass norm=True (every "
        "layer), norm=False (none) or a collection of names such as norm={'block_1'}."
      )
    # Each layer's init key depends only on its own name and the seed, so adding or removing a layer
    # never changes another layer's initialization (and offline heads can rebuild exactly these).
    key = rngs.params()
    self.layers = nnx.Dict(
      {
        name: ParallelHeads(
          dim,
          num_labels,
          num_heads,
          norm=norm if isinstance(norm, bool) else name in norm,
          hidden_dim=hidden_dim,
          dtype=dtype,
          num_valid=num_valid,
          rngs=nnx.Rngs(jax.random.fold_in(key, zlib.crc32(name.encode()) >> 1)),
        )
        for name, dim in feature_dims.items()
      }
    )

  def __call__(self, features: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return {name: self.layers[name](features[name]) for name in self.layers}
