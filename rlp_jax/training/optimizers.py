"""optax optimizers from config: one per parameter group, combined with ``optax.multi_transform``."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import ml_collections
import optax

from rlp_jax.infra.errors import UserError

# Weight decay applies to weight matrices and conv kernels only, never to biases or norm scales,
# as in the WRN and ViT recipes the paper follows.
_DECAYED = ("kernel", "hidden")


def _decay_mask(params):
  def is_decayed(path, _):
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None)) in _DECAYED

  return jax.tree_util.tree_map_with_path(is_decayed, params)


def schedule(cfg: ml_collections.ConfigDict, *, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """Linear warm-up over ``warmup_epochs``, then cosine decay to 0 at the last step (or constant)."""
  if cfg.schedule == "constant":
    return optax.constant_schedule(cfg.learning_rate)
  warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
  return optax.warmup_cosine_decay_schedule(
    0.0, cfg.learning_rate, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1), end_value=0.0
  )


def make(
  cfg: ml_collections.ConfigDict, *, steps_per_epoch: int, total_steps: int
) -> optax.GradientTransformation:
  lr = schedule(cfg, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.name == "adamw":
    parts.append(optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=_decay_mask))
  else:
    if cfg.weight_decay > 0:  # L2 added to the gradient (the classic SGD/Adam formulation)
      parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask))
    if cfg.name == "sgd":
      parts.append(optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    elif cfg.name == "adam":
      parts.append(optax.adam(lr, b1=cfg.b1, b2=cfg.b2))
    else:
      raise UserError(f"unknown optimizer name {cfg.name!r}")
  return optax.chain(*parts)


def grouped(
  configs: Mapping[str, ml_collections.ConfigDict], *, steps_per_epoch: int, total_steps: int
) -> optax.GradientTransformation:
  """One optimizer per top-level parameter group (``params[group]``), each blind to the others.

  Clipping by global norm inside a group measures that group's gradients only: the heads' gradients
  can never rescale the backbone's update (which would break λ = 0 ≡ no heads).
  """
  txs = {g: make(c, steps_per_epoch=steps_per_epoch, total_steps=total_steps) for g, c in configs.items()}
  labels = lambda params: {g: jax.tree.map(lambda _: g, sub) for g, sub in params.items()}  # noqa: E731
  return optax.multi_transform(txs, labels)
