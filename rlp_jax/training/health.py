"""Run health: a regularizer strong enough to collapse training is detected and said (docs/design.md §4).

With λ large enough (digits: λ ≥ 1000), the cheapest way for the network to make its features
unpredictable to the RLP heads is to make them carry nothing: the class head then sits at a uniform
prediction (L_class = ln C, class accuracy at chance 1/C) from the first epochs while λ·L_reg makes up
most of the loss, and the heads' random-label accuracy is that of a constant predictor (the most common
random label's share), not a measure of memorization. Nothing fails, so without this check the numbers
look like a result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# Class accuracy below this multiple of chance 1/C, with the class loss above this share of ln C (the loss
# of a uniform prediction), counts as "at chance". A healthy digits run is at 2-4x chance after its
# one-epoch warm-up (0.37 train accuracy at epoch 2); the collapsed one (λ = 1000) at 1.08x (0.108, L_class
# 2.302 of ln 10 = 2.303, λ·L_reg = 5.3).
CHANCE_FACTOR = 1.5
UNIFORM_LOSS_SHARE = 0.9


def collapse(
  metrics: Mapping[str, float], *, num_classes: int, reg_lambda: float, warmup_epochs: float
) -> str | None:
  """The warning for one evaluation's metrics if training has collapsed under λ, else None.

  Collapsed: past the warm-up (and at least the first epoch), λ > 0, the class head at chance on the train
  subset (accuracy < CHANCE_FACTOR / C and L_class > UNIFORM_LOSS_SHARE · ln C) and λ·L_reg at least as
  large as L_class (the regularizer, not the task, drives the network). Reads ``epoch``,
  ``train/accuracy``, ``loss/class`` and ``loss/reg`` as the training loop logs them.
  """
  keys = ("epoch", "train/accuracy", "loss/class", "loss/reg")
  if reg_lambda <= 0 or num_classes < 2 or any(k not in metrics for k in keys):
    return None
  epoch, acc, l_class, l_reg = (float(metrics[k]) for k in keys)
  chance, uniform = 1.0 / num_classes, math.log(num_classes)
  reg = reg_lambda * l_reg
  if (
    epoch <= max(1.0, warmup_epochs)
    or acc >= CHANCE_FACTOR * chance
    or l_class <= UNIFORM_LOSS_SHARE * uniform
  ):
    return None
  if reg < l_class:
    return None
  return (
    f"training collapsed under the regularizer by epoch {int(epoch)}: class train accuracy {acc:.4f} is at "
    f"chance (1/{num_classes} = {chance:.4f}) and L_class {l_class:.3f} at ln {num_classes} = {uniform:.3f} "
    f"(a uniform prediction), while λ·L_reg = {reg:.3g} outweighs it. The features carry nothing, so the "
    "random-label accuracy is a constant predictor's, not memorization. Lower config.rlp.reg_lambda "
    f"(now {reg_lambda:g})."
  )
