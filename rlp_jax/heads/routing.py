"""The losses of a step — with all gradient routing in one place.

docs/design.md §1. With ``sg = jax.lax.stop_gradient``, one forward pass of the network yields the class
logits and the sown intermediates ``z_l``; from them:

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

With ``reg_normalization='paper'`` each head's L_reg is divided by its n, the paper's Eq. 4 taken with its
1/n (docs/design.md §7): λ_paper·L_reg/n is λ_per_example·L_reg at λ_per_example = λ_paper / n.

``routed_losses`` below (and, for one head's output layer alone, ``route_inputs`` and ``routed_head_loss``,
which the benchmarks use) are the only functions that place ``stop_gradient``; everything else in the
package is routing-agnostic.

Sign of L_reg: the paper's Eq. 4 prints ``log(1 - p̂)``, but its text says the term *penalizes* confident,
correct random-label predictions of the feature extractor. Minimizing ``log(1 - p̂)`` would reward them, so
we implement the penalty ``-log(1 - p̂_ŷ) >= 0``, which is minimized at ``p̂_ŷ = 0``.

Why the head has two sets of inputs (``sg(z)`` with ψ for L_rnd, ``z`` with ``sg(ψ)`` for L_reg): it
makes each loss's reach explicit. ``stop_gradient`` is the identity in the forward pass, so both sets hold
the same values; ``parallel_head_stats`` computes the logits once and differentiates each statistic
through its own set (head_loss.py), so regularizing adds only the matmul of dz, not a second evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlp_jax.heads import head_loss
from rlp_jax.heads.heads import LayerHeads, ParallelHeads, pool_features
from rlp_jax.heads.label_axis import HeadStats
from rlp_jax.infra import mesh as mesh_lib

sg = jax.lax.stop_gradient


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example CE in float32; integer labels, optional label smoothing."""
  logits = logits.astype(jnp.float32)
  if label_smoothing == 0.0:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def parallel_head_stats(
  head: ParallelHeads,
  u: jax.Array,
  labels: jax.Array,
  *,
  mesh=None,
  label_chunk: int = 0,
  log1m_inputs: tuple[ParallelHeads, jax.Array] | None = None,
  loss_kernel: str = "xla",
) -> HeadStats:
  """head_loss.head_stats of one ParallelHeads on standardized features ``u = head.standardize(z)``.

  Per example and head (B, H): ``ce`` = CE(s, ŷ), ``log1m`` = log(1 - p̂_ŷ), ``correct`` = argmax == ŷ.
  ``log1m_inputs=(head', u')``, equal in value to ``(head, u)``, differentiates ``log1m`` through them
  instead of through ``(head, u)``: one evaluation, two gradient routes (routed_losses). Exact in value
  and gradient (tested against autodiff of full logits): label-sharded over the mesh's ``model`` axis
  when it has several devices, ``label_chunk`` labels at a time when > 0.
  """
  return head_loss.head_stats(
    *_output_layer(head, u),
    labels,
    log1m_inputs=None if log1m_inputs is None else _output_layer(*log1m_inputs),
    num_valid=head.num_valid,
    dtype=head.dtype,
    label_chunk=label_chunk,
    mesh=mesh if mesh_lib.label_sharded(mesh) else None,
    loss_kernel=loss_kernel,
  )


def route_inputs(x: jax.Array, kernel: jax.Array, bias: jax.Array):
  """One output layer's two input sets, equal in value, as routed_losses routes a head.

  L_rnd's ``(sg(x), kernel, bias)`` (the head moves) and L_reg's ``(x, sg(kernel), sg(bias))`` (the
  features move).
  """
  return (sg(x), kernel, bias), (x, sg(kernel), sg(bias))


def routed_head_loss(x, kernel, bias, labels, reg_lambda: float, **stats_kwargs) -> jax.Array:
  """``mean(ce) - λ·mean(log1m)`` of one output layer ``x @ kernel + bias``, routed as L_rnd + λ·L_reg.

  The shapes are head_loss.head_stats's. ce goes through L_rnd's inputs, log1m through L_reg's
  (route_inputs); at λ = 0 only L_rnd is built. ``stats_kwargs`` go to head_loss.head_stats (num_valid,
  dtype, label_chunk, loss_kernel).
  """
  rnd, reg = route_inputs(x, kernel, bias)
  ce, log1m, _ = head_loss.head_stats(*rnd, labels, log1m_inputs=reg if reg_lambda else None, **stats_kwargs)
  return ce.mean() - reg_lambda * log1m.mean() if reg_lambda else ce.mean()


def reg_scale(reg_normalization: str, num_labels: int) -> float:
  """What multiplies a head's mean -log(1 - p̂_ŷ) in L_reg: 1, or the paper's 1/n (docs/design.md §7)."""
  if reg_normalization == "per_example":
    return 1.0
  if reg_normalization == "paper":
    return 1.0 / num_labels
  raise ValueError(f"reg_normalization must be 'per_example' or 'paper', got {reg_normalization!r}")


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
  loss_kernel: str = "xla",
  reg_normalization: str = "per_example",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total loss ``L_class + L_rnd + λ·L_reg + L_probe`` and its parts, with docs/design.md §1's routing.

  Args:
    class_logits: g_φ(f_θ(x)), (B, N).
    features: the sown intermediates z_l (not yet pooled), by layer name — still connected to θ.
    labels: class labels y, (B,) (the possibly-noisy training label).
    rlp_labels: ŷ, (B, num_heads) int.
    heads / probes: the RLP heads and class probes (None when absent).
    reg_layers: names of the layers whose heads regularize (a subset of the heads' layers).
    reg_lambda: λ. λ = 0 is a pure measurement: L_reg is then not built at all, so the backbone's
      gradients are those of L_class alone, bit for bit.
    label_smoothing: of L_class only.
    pool: how a sown map (B, ..., C) becomes the (B, D) a head or probe reads (heads.pool_features):
      ``'mean'`` over every position (the default: right for any model, a class token included if there is
      one), ``'token'`` (a ViT's class token), ``'mean_patches'`` or ``'flatten'``. A run's
      ``config.rlp.pool`` defaults to ``'classifier'``, which is resolved per model before it gets here
      (``configuration.feature_pool``: ``'token'`` for a ViT with a class token, else ``'mean'``); pass
      ``pool='token'`` to read a class-token ViT's blocks as the runs do.
    mesh: when its ``model`` axis is > 1, the heads' label axis is sharded over it (see parallel_head_stats).
    label_chunk: > 0 computes the heads' statistics that many labels at a time (see parallel_head_stats).
    loss_kernel: 'xla' or 'pallas' (head_loss.head_stats's backend).
    reg_normalization: 'per_example' (L_reg = mean -log(1 - p̂_ŷ)) or 'paper' (the same divided by each
      head's number of labels n: the paper's Eq. 4, ``(1/n) Σ_i δ_iŷ log(1 - p̂_i)``, with its 1/n).
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
      name: parallel_head_stats(
        heads.layers[name],
        sg(u),
        rlp_labels,
        mesh=mesh,
        label_chunk=label_chunk,
        log1m_inputs=(frozen.layers[name], u) if regularize and name in reg_layers else None,
        loss_kernel=loss_kernel,
      )
      for name, u in pooled.items()
    }
    l_rnd = jnp.mean(jnp.stack([st.ce.mean() for st in rnd.values()]))
    total = total + l_rnd
    parts["loss/rnd"] = l_rnd
    l_reg = jnp.mean(
      jnp.stack(
        [
          -rnd[n].log1m.mean() * reg_scale(reg_normalization, heads.layers[n].num_valid)
          for n in reg_layers or rnd
        ]
      )
    )
    if regularize:
      total = total + reg_lambda * l_reg
      parts["loss/reg"] = l_reg
    else:  # reported for the curves only: detached, it cannot move anything
      parts["loss/reg"] = sg(l_reg)
    parts["rnd_correct"] = {name: st.correct for name, st in rnd.items()}

  if probes is not None:
    # L_probe: class probes read detached features — only the probes move.
    probe_logits = probes({name: sg(pool_features(features[name], pool)) for name in probes.layers})
    l_probe = jnp.mean(jnp.stack([cross_entropy(s[:, 0], labels).mean() for s in probe_logits.values()]))
    total = total + l_probe
    parts["loss/probe"] = l_probe
    parts["probe_correct"] = {name: jnp.argmax(s[:, 0], -1) == labels for name, s in probe_logits.items()}

  parts["loss/total"] = total
  return total, parts
