"""RLP heads, class probes, and the losses — with all gradient routing in one place.

DESIGN §1. With ``sg = jax.lax.stop_gradient``, one forward pass of the network yields the class logits
and the sown intermediates ``z_l``; from them:

  =========  ==================================================  ======================
  loss       formula                                             gradients reach
  =========  ==================================================  ======================
  L_class    CE(g_φ(f_θ(x)), y), optionally label-smoothed       θ (backbone), φ (head)
  L_rnd      mean_k CE(h_ψk(sg(z_k)), ŷ_k)                       ψ (RLP heads) only
  L_reg      mean_k over regularizing heads -log(1 - p̂_k[ŷ_k]),   θ only
             p̂_k = softmax(h_{sg(ψk)}(z_k))
  L_probe    mean_l CE(q_l(sg(z_l)), y)                          probe parameters only
  =========  ==================================================  ======================

  L = L_class + L_rnd + λ·L_reg + L_probe

``routed_losses`` below is the only function that places ``stop_gradient``; everything else in the
package is routing-agnostic.

Sign of L_reg: the paper's Eq. 4 prints ``log(1 - p̂)``, but its text says the term *penalizes* confident,
correct random-label predictions of the feature extractor. Minimizing ``log(1 - p̂)`` would reward them, so
we implement the penalty ``-log(1 - p̂_ŷ) >= 0``, which is minimized at ``p̂_ŷ = 0``.

Why the head has two sets of inputs (``sg(z)`` with ψ for L_rnd, ``z`` with ``sg(ψ)`` for L_reg): it
makes each loss's reach explicit. ``stop_gradient`` is the identity in the forward pass, so both sets hold
the same values; ``head_stats`` computes the logits once and differentiates each statistic through its
own set (head_loss.py), so regularizing adds only the matmul of dz, not a second evaluation.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlp_jax import head_loss, sharding
from rlp_jax.head_loss import dense, mask_padding

sg = jax.lax.stop_gradient


# ----------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------


def pool_features(z: jax.Array, pool: str = "mean") -> jax.Array:
  """(B, ..., C) -> (B, D). Spatial/token maps are averaged (``mean``) or flattened (``flatten``).

  Mean pooling is the default because a head on a flattened early conv map would be enormous
  (WRN block_1 on CIFAR: 32·32·64 features × n labels) and would measure the head, not the network.
  """
  if z.ndim == 2:
    return z
  if pool == "mean":
    return z.reshape(z.shape[0], -1, z.shape[-1]).mean(axis=1)
  if pool == "flatten":
    return z.reshape(z.shape[0], -1)
  raise ValueError(f"config.rlp.pool must be 'mean' or 'flatten', got {pool!r}.")


class ParallelHeads(nnx.Module):
  """``num_heads`` independent classifiers over the same features, computed as one batched einsum.

  Variants (DESIGN §1): linear (default); ``norm=True`` puts a LayerNorm (own scale/bias per head) before
  the dense layer, as the paper does for transformer blocks; ``hidden_dim > 0`` adds one ReLU hidden layer
  of that width (A.6). Output logits have shape (B, num_heads, num_labels) and are float32.

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
    """What the output layer reads, from standardized features u: u itself (B, D), or per head
    (B, H, D') after the LayerNorm's scale and shift and / or the hidden layer."""
    x = u
    if self.norm:
      x = x[:, None, :] * self.scale[None] + self.shift[None]  # (B, H, D)
    if self.hidden is not None:
      x = jax.nn.relu(dense(x, self.hidden[...], self.hidden_bias[...], self.dtype))
    return x

  def __call__(self, z: jax.Array) -> jax.Array:
    x = self.inputs(self.standardize(z))
    return mask_padding(dense(x, self.kernel[...], self.bias[...], self.dtype), self.num_valid)


# PRNG streams (folded into config.seed) of the heads and probes: independent of the model's stream.
RLP_STREAM, PROBE_STREAM = 1, 2


def build_heads(
  config, feature_dims: Mapping[str, int], layers: Sequence[str], num_labels: int, *, label_multiple: int = 1
) -> LayerHeads | None:
  """The RLP heads of a run, with their fixed initialization: online and offline heads start identical.

  ``label_multiple``: pad the label axis to a multiple of this (the mesh's ``model`` axis) with masked
  labels, so that any n — ImageNet's prime m = 1,281,167 included — can be sharded evenly.
  """
  if not layers:
    return None
  padded = -(-num_labels // label_multiple) * label_multiple
  rngs = nnx.Rngs(params=jax.random.fold_in(jax.random.key(config.seed), RLP_STREAM))
  return LayerHeads(
    {k: feature_dims[k] for k in layers},
    padded,
    config.rlp.num_heads,
    norm=config.rlp.norm,
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
  rngs = nnx.Rngs(params=jax.random.fold_in(jax.random.key(config.seed), PROBE_STREAM))
  return LayerHeads(
    {k: feature_dims[k] for k in layers}, num_classes, 1, norm=config.rlp.norm, hidden_dim=0, rngs=rngs
  )


class LayerHeads(nnx.Module):
  """One ``ParallelHeads`` per named layer: the RLP heads (or the class probes) of a whole network."""

  def __init__(
    self,
    feature_dims: Mapping[str, int],
    num_labels: int,
    num_heads: int,
    *,
    norm: bool,
    hidden_dim: int,
    dtype: str = "float32",
    num_valid: int | None = None,
    rngs: nnx.Rngs,
  ):
    # Each layer's init key depends only on its own name and the seed, so adding or removing a layer
    # never changes another layer's initialization (and offline heads can rebuild exactly these).
    key = rngs.params()
    self.layers = nnx.Dict(
      {
        name: ParallelHeads(
          dim,
          num_labels,
          num_heads,
          norm=norm,
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


# ----------------------------------------------------------------------------------------------------
# Numerics
# ----------------------------------------------------------------------------------------------------


def log1m_softmax(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """``log(1 - softmax(logits)[label])``, exactly and stably.

  ``1 - p_y = Σ_{j≠y} e^{s_j} / Σ_j e^{s_j}``, so ``log(1 - p_y) = logsumexp(s_{j≠y}) - logsumexp(s)``.
  The naive form is -inf/NaN once the head saturates (p_y rounds to 1), a known failure of
  gradient-reversal heads; this one stays finite with finite gradients for any finite logits.
  """
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.bool_)
  others = jnp.where(onehot, -jnp.inf, logits)
  return jax.nn.logsumexp(others, axis=-1) - jax.nn.logsumexp(logits, axis=-1)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example CE in float32; integer labels, optional label smoothing."""
  logits = logits.astype(jnp.float32)
  if label_smoothing == 0.0:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


# ----------------------------------------------------------------------------------------------------
# Gradient routing
# ----------------------------------------------------------------------------------------------------


def head_stats(
  head: ParallelHeads,
  u: jax.Array,
  labels: jax.Array,
  mesh=None,
  chunk: int = 0,
  log1m_via: tuple[ParallelHeads, jax.Array] | None = None,
) -> dict[str, jax.Array]:
  """Per example and head (B, H): ``ce`` = CE(s, ŷ), ``log1m`` = log(1 - p̂_ŷ), ``correct`` = argmax == ŷ,
  for the head's logits s on standardized features ``u = head.standardize(z)``.

  ``log1m_via=(head', u')``, equal in value to ``(head, u)``, differentiates ``log1m`` through them
  instead of through ``(head, u)``: one evaluation, two gradient routes (routed_losses).

  From head_loss.head_stats, exact in value and gradient (tested against autodiff of full logits):
  label-sharded over the mesh's ``model`` axis when it has several devices, ``chunk`` labels at a time
  when chunk > 0, and with a backward pass that touches the (B, H, n) logits once.
  """
  ce, log1m, correct = head_loss.head_stats(
    *_output_layer(head, u),
    labels,
    log1m_inputs=None if log1m_via is None else _output_layer(*log1m_via),
    num_valid=head.num_valid,
    dtype=head.dtype,
    chunk=chunk,
    mesh=mesh if sharding.label_sharded(mesh) else None,
  )
  return {"ce": ce, "log1m": log1m, "correct": correct}


def _output_layer(head: ParallelHeads, u: jax.Array):
  """(inputs, kernel, bias) of the head's output layer."""
  return head.inputs(u), head.kernel[...], head.bias[...]


def routed_losses(
  *,
  class_logits: jax.Array,
  features: Mapping[str, jax.Array],
  labels: jax.Array,
  rlp_labels: jax.Array | None,
  heads: LayerHeads | None,
  probes: LayerHeads | None,
  reg_layers: Sequence[str],
  reg_lambda: float,
  label_smoothing: float = 0.0,
  pool: str = "mean",
  mesh=None,
  label_chunk: int = 0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total loss ``L_class + L_rnd + λ·L_reg + L_probe`` and its parts, with DESIGN §1's routing.

  Args:
    class_logits: g_φ(f_θ(x)), (B, N).
    features: the sown intermediates z_l (not yet pooled), by layer name — still connected to θ.
    labels: class labels y, (B,) (the possibly-noisy training label).
    rlp_labels: ŷ, (B, num_heads) int.
    heads / probes: the RLP heads and class probes (None when absent).
    reg_layers: names of the layers whose heads regularize (a subset of the heads' layers).
    reg_lambda: λ. λ = 0 is a pure measurement: L_reg is then not built at all, so the backbone's
      gradients are those of L_class alone, bit for bit.
    mesh: when its ``model`` axis is > 1, the heads' label axis is sharded over it (see head_stats).
    label_chunk: > 0 computes the heads' statistics that many labels at a time (see head_stats).
  Returns:
    (total, parts): the scalar losses, plus per-layer (B, H) ``rnd_correct`` and (B,) ``probe_correct``.
  """
  l_class = cross_entropy(class_logits, labels, label_smoothing).mean()
  parts: dict[str, jax.Array] = {"loss/class": l_class}
  total = l_class

  if heads is not None:
    pooled = {
      name: heads.layers[name].standardize(pool_features(features[name], pool)) for name in heads.layers
    }
    regularize = reg_lambda > 0 and bool(reg_layers)
    if regularize:
      graphdef, head_params = nnx.split(heads)
      frozen = nnx.merge(graphdef, jax.tree.map(sg, head_params))
    # L_rnd: the heads learn random labels from *detached* features — ψ moves, θ does not.
    # L_reg: frozen copies of the heads (sg(ψ)) score the *live* features — θ moves, ψ does not.
    # Both from one evaluation of each head: ce through (sg(z), ψ), log1m through (z, sg(ψ)).
    rnd = {
      name: head_stats(
        heads.layers[name],
        sg(u),
        rlp_labels,
        mesh,
        label_chunk,
        log1m_via=(frozen.layers[name], u) if regularize and name in reg_layers else None,
      )
      for name, u in pooled.items()
    }
    l_rnd = jnp.mean(jnp.stack([st["ce"].mean() for st in rnd.values()]))
    total = total + l_rnd
    parts["loss/rnd"] = l_rnd
    if regularize:
      l_reg = jnp.mean(jnp.stack([-rnd[name]["log1m"].mean() for name in reg_layers]))
      total = total + reg_lambda * l_reg
      parts["loss/reg"] = l_reg
    else:
      # Reported for the curves only; computed from detached statistics, so it cannot move anything.
      parts["loss/reg"] = jnp.mean(jnp.stack([-sg(rnd[n]["log1m"]).mean() for n in reg_layers or rnd]))
    parts["rnd_correct"] = {name: st["correct"] for name, st in rnd.items()}

  if probes is not None:
    # L_probe: class probes read detached features — only the probes move.
    probe_logits = probes({name: sg(pool_features(features[name], pool)) for name in probes.layers})
    l_probe = jnp.mean(jnp.stack([cross_entropy(s[:, 0], labels).mean() for s in probe_logits.values()]))
    total = total + l_probe
    parts["loss/probe"] = l_probe
    parts["probe_correct"] = {name: jnp.argmax(s[:, 0], -1) == labels for name, s in probe_logits.items()}

  parts["loss/total"] = total
  return total, parts


# ----------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------


def head_correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """(B, H) bool: does head h's argmax equal its random label?"""
  return jnp.argmax(logits, axis=-1) == labels


def accuracy_metrics(per_head: Mapping[str, np.ndarray], num_labels: int, prefix: str = "rlp") -> dict:
  """``<prefix>/<layer>/{accuracy,chance,chance_corrected}`` (mean over heads) and, with several heads,
  ``<prefix>/<layer>/head_<k>/accuracy``."""
  out = {}
  for name, acc in per_head.items():
    acc = np.asarray(acc, np.float64)
    out[f"{prefix}/{name}/accuracy"] = float(acc.mean())
    out[f"{prefix}/{name}/chance"] = 1.0 / num_labels
    out[f"{prefix}/{name}/chance_corrected"] = float(chance_corrected(acc.mean(), num_labels))
    if acc.size > 1:
      out.update({f"{prefix}/{name}/head_{j}/accuracy": float(a) for j, a in enumerate(acc)})
  return out


def chance_corrected(accuracy, num_labels: int):
  """``(acc - 1/n) / (1 - 1/n)``: 0 at chance, 1 at perfect memorization."""
  chance = 1.0 / num_labels
  return (accuracy - chance) / (1.0 - chance)
