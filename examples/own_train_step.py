"""RLP heads on your own Flax model, trained by your own jitted step.

  python examples/own_train_step.py [--steps=300] [--reg_lambda=0.3] [--num_labels=10] [--num_heads=1]

A two-layer nnx MLP on scikit-learn's digits sows its hidden features; an RLP head reads them. Every
example i gets random labels ŷ_k(i) = H(seed, k, i) mod n from its index (rlp_jax.data.labels). One call,
rlp_jax.heads.routed_losses, returns L_class + L_rnd + λ·L_reg with the gradient routing already in place
(docs/design.md §1), so the train step below is plain ``jax.value_and_grad`` + optax: no stop_gradient of
its own. The backbone and the heads get different optimizers (the heads keep a constant Adam lr: they are a
measuring instrument, docs/design.md §7).

It prints the losses every few steps, then the random-label accuracy of the head beside chance 1/n, and
the gradient norm each loss sends to the backbone and to the heads: L_rnd reaches the heads only, L_reg
(λ > 0) the backbone only. The last line is a JSON summary (what tests/test_examples.py reads).
"""

from __future__ import annotations

import argparse
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

from rlp_jax.data.labels import random_labels
from rlp_jax.heads import LayerHeads, accuracy_metrics, routed_losses
from rlp_jax.models import sown_features


class Net(nnx.Module):
  """Any nnx model works: it only has to sow what a head should read."""

  def __init__(self, in_features: int, num_classes: int, width: int, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(in_features, width, rngs=rngs)
    self.out = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.hidden(x))
    # Captured by rlp_jax.models.sown_features. (Called outside nnx.capture, flax would store the value
    # on the module; rlp_jax.models.sow_intermediate skips the sow there instead.)
    self.sow(nnx.Intermediate, "features", h)
    return self.out(h)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--reg_lambda", type=float, default=0.3)
  parser.add_argument("--num_labels", type=int, default=10)
  parser.add_argument("--num_heads", type=int, default=1)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  digits = load_digits()
  x_all = (digits.data / 16.0).astype(np.float32)
  y_all = digits.target.astype(np.int32)
  index = np.arange(len(y_all))  # the stable example index the random labels hash
  rlp_all = random_labels(args.seed, index, args.num_labels, args.num_heads)  # (m, num_heads) int32

  # Built under nnx.jit: one compiled initialization instead of one per eager op (seconds on a CPU).
  @nnx.jit
  def create():
    model = Net(x_all.shape[1], 10, width=64, rngs=nnx.Rngs(args.seed))
    heads = LayerHeads(
      {"features": 64},
      args.num_labels,
      args.num_heads,
      norm=False,
      hidden_dim=0,
      rngs=nnx.Rngs(args.seed + 1),
    )
    return model, heads

  model, heads = create()
  model_def, model_params = nnx.split(model)
  heads_def, head_params = nnx.split(heads)
  params = {"model": model_params, "heads": head_params}
  tx = optax.multi_transform(
    {"model": optax.sgd(0.1, momentum=0.9), "heads": optax.adam(1e-2)},
    {
      "model": jax.tree.map(lambda _: "model", model_params),
      "heads": jax.tree.map(lambda _: "heads", head_params),
    },
  )
  opt_state = tx.init(params)

  def losses(params, x, y, rlp_y):
    logits, features = sown_features(nnx.merge(model_def, params["model"]), x)
    return routed_losses(
      class_logits=logits,
      features=features,  # {"features": (B, 64)}, still connected to the model's parameters
      labels=y,
      rlp_labels=rlp_y,
      heads=nnx.merge(heads_def, params["heads"]),
      probes=None,
      reg_layers=["features"],
      reg_lambda=args.reg_lambda,  # a Python float: λ = 0 does not build L_reg at all
    )

  @jax.jit
  def train_step(params, opt_state, x, y, rlp_y):
    (_, parts), grads = jax.value_and_grad(losses, has_aux=True)(params, x, y, rlp_y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, parts

  rng = np.random.default_rng(args.seed)
  first = None
  for step in range(1, args.steps + 1):
    b = rng.choice(len(y_all), args.batch_size, replace=False)
    params, opt_state, parts = train_step(params, opt_state, x_all[b], y_all[b], rlp_all[b])
    scalars = {k: float(parts[f"loss/{k}"]) for k in ("class", "rnd", "reg")}
    first = first or scalars
    if step == 1 or step % max(1, args.steps // 5) == 0 or step == args.steps:
      print(f"step {step:4d}  " + "  ".join(f"L_{k} {v:.4f}" for k, v in scalars.items()))

  # Class and random-label accuracy on all training examples, the latter beside chance 1/n.
  @jax.jit
  def evaluate(params, x, y, rlp_y):
    logits, _ = sown_features(nnx.merge(model_def, params["model"]), x)
    _, parts = losses(params, x, y, rlp_y)
    return jnp.mean(jnp.argmax(logits, -1) == y), jnp.mean(parts["rnd_correct"]["features"], axis=0)

  class_accuracy, rnd_accuracy = evaluate(params, x_all, y_all, rlp_all)
  class_accuracy = float(class_accuracy)
  metrics = accuracy_metrics({"features": np.asarray(rnd_accuracy)}, args.num_labels)
  print(
    f"class accuracy {class_accuracy:.3f}; random-label accuracy {metrics['rlp/features/accuracy']:.3f} "
    f"(chance {1 / args.num_labels:.3f}, chance-corrected {metrics['rlp/features/chance_corrected']:.3f})"
  )

  # Where each loss sends gradients: the routing routed_losses placed, seen from outside.
  @jax.jit
  def grad_norms(params, x, y, rlp_y):
    out = {}
    for name in ("class", "rnd", "reg"):
      g = jax.grad(lambda p, name=name: losses(p, x, y, rlp_y)[1][f"loss/{name}"])(params)
      out[name] = {part: optax.global_norm(g[part]) for part in ("model", "heads")}
    return out

  norms = jax.tree.map(float, grad_norms(params, x_all, y_all, rlp_all))
  for name, n in norms.items():
    print(f"grad of L_{name:5s}  backbone {n['model']:.3e}  heads {n['heads']:.3e}")
  assert norms["rnd"]["model"] == 0.0 and norms["reg"]["heads"] == 0.0 and norms["class"]["heads"] == 0.0
  print(
    "routing: L_rnd moves only the heads, L_reg only the backbone; the train step placed no stop_gradient"
  )

  print(
    json.dumps(
      {
        "first": first,
        "last": scalars,
        "random_label_accuracy": metrics["rlp/features/accuracy"],
        "chance": 1 / args.num_labels,
        "log_num_labels": math.log(args.num_labels),
        "grad_norms": norms,
        "backend": jax.default_backend(),
        "class_accuracy": class_accuracy,
      }
    )
  )


if __name__ == "__main__":
  main()
