"""The optimizers of training/optimizers.py: weight decay reaches weight matrices only, groups stay apart."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from rlp_jax.heads import heads as heads_lib
from rlp_jax.infra import configuration
from rlp_jax.models import create_model
from rlp_jax.training import optimizers

# Leaf names that are weight matrices (conv kernels, dense kernels, the heads' hidden layer).
MATRICES = {"kernel", "hidden"}


def _model_params(name):
  """A real model's parameter tree (shapes only), every leaf set to ones."""
  cfg = ml_collections.ConfigDict(
    dict(name=name, width=2, depth=10 if name == "wrn" else 2, dropout=0.0, variant="Ti", patch_size=4)
  )
  cfg.update(dict(num_heads=1, dtype="float32", classifier="token") if name == "vit" else {})
  if name == "vit":
    cfg.width = 8
  model = nnx.eval_shape(lambda: create_model(cfg, 5, (8, 8, 3), nnx.Rngs(0)))
  return jax.tree.map(lambda v: jnp.ones(v.shape), nnx.state(model, nnx.Param).to_pure_dict())


def _head_params():
  heads = nnx.eval_shape(
    lambda: heads_lib.LayerHeads({"a": 4, "b": 3}, 6, 2, norm=True, hidden_dim=5, rngs=nnx.Rngs(0))
  )
  return jax.tree.map(lambda v: jnp.ones(v.shape), nnx.state(heads).to_pure_dict())


def _leaf_names(tree):
  return {
    jax.tree_util.keystr(path): str(getattr(path[-1], "key", path[-1]))
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


@pytest.mark.parametrize("opt_name", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("model_name", ["mlp", "cnn", "wrn", "vit"])
def test_weight_decay_shrinks_weight_matrices_only(model_name, opt_name):
  """One update with zero gradients: only decay can move a parameter. Kernels (and the heads' hidden
  layers) shrink; biases, norm scales and shifts, ViT's class token and position embedding do not."""
  params = {"model": _model_params(model_name), "rlp": _head_params()}
  cfg = configuration.optimizer_config(opt_name, 0.1, weight_decay=0.5, schedule="constant", momentum=0.0)
  tx = optimizers.grouped({"model": cfg, "rlp": cfg}, steps_per_epoch=10, total_steps=100)

  @jax.jit
  def step(params):
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    return optax.apply_updates(params, updates)

  after = step(params)
  names = _leaf_names(params)
  assert {"bias", "scale", "shift", "hidden_bias"} & set(names.values())  # there are leaves to keep
  flat_after = dict(zip(names, jax.tree.leaves(after)))
  for path, name in names.items():
    leaf = np.asarray(flat_after[path])
    if name in MATRICES:
      assert np.all(leaf < 1.0) and np.all(leaf > 0.0), path
    else:
      np.testing.assert_array_equal(leaf, 1.0, err_msg=path)


def test_groups_have_their_own_decay_and_clipping():
  """Decay configured for one group does not reach another, and a huge gradient in one group is clipped by
  that group's norm only: the other group's update is what it would be alone."""
  params = {"model": {"kernel": jnp.ones((3, 3))}, "rlp": {"kernel": jnp.ones((3, 3))}}
  decayed = configuration.optimizer_config("sgd", 0.1, weight_decay=0.5, schedule="constant", momentum=0.0)
  clipped = configuration.optimizer_config("sgd", 0.1, grad_clip_norm=1.0, schedule="constant", momentum=0.0)
  tx = optimizers.grouped({"model": clipped, "rlp": decayed}, steps_per_epoch=1, total_steps=10)
  grads = {"model": {"kernel": jnp.full((3, 3), 1e3)}, "rlp": {"kernel": jnp.zeros((3, 3))}}
  updates, _ = tx.update(grads, tx.init(params), params)
  # model: clipped to global norm 1 (each entry 1/3), no decay; rlp: decay only (0.1 * 0.5 * 1).
  np.testing.assert_allclose(updates["model"]["kernel"], -0.1 / 3, rtol=1e-5)
  np.testing.assert_allclose(updates["rlp"]["kernel"], -0.05, rtol=1e-5)
