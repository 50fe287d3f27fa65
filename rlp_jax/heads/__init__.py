"""RLP heads and their losses, for this package's training loop or your own train step.

The public names (README "Use RLP heads in your own code"; examples/own_train_step.py):

  LayerHeads, ParallelHeads   the heads: one ``ParallelHeads`` (``num_heads`` classifiers) per sown layer
  pool_features               (B, ..., C) -> (B, D): what a head reads from a spatial or token map
  routed_losses               L_class + L_rnd + λ·L_reg (+ L_probe) with all the stop_gradients placed
  cross_entropy               the class loss routed_losses uses (float32, optional label smoothing)
  accuracy_metrics, chance_corrected
                              random-label accuracy beside chance 1/n, chance-corrected

The random labels themselves are a hash of each example's index: ``rlp_jax.data.labels.random_labels``.
"""

from rlp_jax.heads.heads import LayerHeads, ParallelHeads, pool_features
from rlp_jax.heads.metrics import accuracy_metrics, chance_corrected
from rlp_jax.heads.routing import cross_entropy, routed_losses

__all__ = [
  "LayerHeads",
  "ParallelHeads",
  "accuracy_metrics",
  "chance_corrected",
  "cross_entropy",
  "pool_features",
  "routed_losses",
]
