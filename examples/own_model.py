"""RLP heads on your own NNX model with BatchNorm and Dropout, through rlp_jax.training.own_model.

  python examples/own_model.py [--epochs=20] [--reg_lambda=0.3] [--num_labels=100]

A small MLP on scikit-learn's digits with ``nnx.BatchNorm`` and ``nnx.Dropout`` sows its hidden features;
an RLP head reads them. ``OwnModel`` splits the model by kind (``nnx.Param`` trained, ``nnx.BatchStat`` and
Dropout's ``nnx.RngState`` carried), gives the heads their own optimizer, and runs the losses of
``routed_losses`` (docs/design.md §1). It prints the per-epoch metrics, then the evaluation beside chance,
and the controls: the converged probe and fresh offline heads, on the network at init and trained.
The last line is a JSON summary (what tests/test_examples.py reads).
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

from rlp_jax.heads import LayerHeads
from rlp_jax.training.own_model import OwnModel


class Net(nnx.Module):
  """Linear -> BatchNorm -> ReLU -> Dropout, sown as ``features``, then the class layer."""

  def __init__(self, in_features: int, num_classes: int, width: int, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(in_features, width, rngs=rngs)
    self.norm = nnx.BatchNorm(width, rngs=rngs)
    self.dropout = nnx.Dropout(0.2, rngs=rngs)
    self.out = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, x):
    h = self.dropout(nnx.relu(self.norm(self.hidden(x))))
    self.sow(nnx.Intermediate, "features", h)  # what the head reads (captured by OwnModel)
    return self.out(h)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--reg_lambda", type=float, default=0.3)
  parser.add_argument("--num_labels", type=int, default=100)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  digits = load_digits()
  x_all = (digits.data / 16.0).astype(np.float32)
  y_all = digits.target.astype(np.int32)
  index = np.arange(len(y_all))  # each example's stable position: its random labels hash it

  model = Net(x_all.shape[1], 10, width=64, rngs=nnx.Rngs(args.seed))
  heads = LayerHeads(
    {"features": 64}, args.num_labels, 1, norm=False, hidden_dim=0, rngs=nnx.Rngs(args.seed + 1)
  )
  rlp = OwnModel(
    model,
    heads,
    model_tx=optax.sgd(0.1, momentum=0.9),
    heads_tx=optax.adam(1e-2),
    reg_layers=["features"],
    reg_lambda=args.reg_lambda,
    seed=args.seed,
  )
  initial = rlp.init()
  state = initial
  rng = np.random.default_rng(args.seed)
  steps = len(y_all) // args.batch_size
  for epoch in range(1, args.epochs + 1):
    order = rng.permutation(len(y_all))
    for s in range(steps):
      b = order[s * args.batch_size : (s + 1) * args.batch_size]
      state, metrics = rlp.train_step(state, x_all[b], y_all[b], index[b])
    if epoch == 1 or epoch % 5 == 0:
      shown = {k: np.round(np.asarray(v), 4).tolist() for k, v in metrics.items()}
      print(f"epoch {epoch:3d}  last batch: {shown}")

  result = rlp.evaluate(state, x_all, y_all, index)
  print(
    f"class accuracy {result['accuracy']:.3f}; random-label accuracy {result['rlp/features/accuracy']:.3f} "
    f"(chance {result['rlp/features/chance']:.3f})"
  )
  controls = {
    "probe_at_init": rlp.probe_accuracy(initial, x_all, index)["features"],
    "probe_trained": rlp.probe_accuracy(state, x_all, index)["features"],
    "offline_at_init": rlp.offline_accuracy(initial, x_all, index, num_epochs=args.epochs)["features"],
    "offline_trained": rlp.offline_accuracy(state, x_all, index, num_epochs=args.epochs)["features"],
  }
  for k, v in controls.items():
    print(f"{k:16s} {float(v.mean()):.3f}")

  moved = jax.tree.map(
    lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), initial.batch_stats, state.batch_stats
  )
  print(
    json.dumps(
      {
        "metric_shapes": {k: list(np.shape(v)) for k, v in metrics.items()},
        "evaluate": result,
        "controls": {k: float(v.mean()) for k, v in controls.items()},
        "batch_stats_moved": max(jax.tree.leaves(moved)),
        "rng_count": _count(state.rngs),
        "steps": int(state.step),
      }
    )
  )


def _count(rngs) -> int:
  """Dropout's stream count in the carried RngState: how many keys it has drawn."""
  counts = [
    v for path, v in jax.tree_util.tree_leaves_with_path(rngs) if "count" in jax.tree_util.keystr(path)
  ]
  return int(np.asarray(counts[0])) if counts else 0


if __name__ == "__main__":
  main()
