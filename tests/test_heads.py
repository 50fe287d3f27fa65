"""heads/heads.py: parallel heads are independent classifiers, and the variants train end to end.

One-hidden-layer heads (rlp.hidden_dim > 0) on flattened conv maps (rlp.pool='flatten') are trained,
evaluated and controlled offline by the real loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import make_tiny_config
from flax import nnx

from rlp_jax.heads import heads as heads_lib
from rlp_jax.training import loop


def test_parallel_heads_variants_shapes():
  """Logits (B, H, n) in float32 for every variant; traced only, nothing is compiled."""
  for kwargs in ({}, {"norm": True}, {"hidden_dim": 5}, {"norm": True, "hidden_dim": 3}):
    out = jax.eval_shape(
      lambda: heads_lib.ParallelHeads(6, 11, 3, rngs=nnx.Rngs(0), **kwargs)(jnp.ones((4, 6)))
    )
    assert out.shape == (4, 3, 11) and out.dtype == jnp.float32
  assert heads_lib.pool_features(jnp.ones((2, 4, 4, 3))).shape == (2, 3)
  assert heads_lib.pool_features(jnp.ones((2, 4, 4, 3)), "flatten").shape == (2, 48)


def test_parallel_heads_are_independent_classifiers():
  heads = heads_lib.ParallelHeads(6, 4, 3, rngs=nnx.Rngs(0))
  z = jax.random.normal(jax.random.key(0), (5, 6))
  out = heads(z)
  for h in range(3):
    np.testing.assert_allclose(out[:, h], z @ heads.kernel[...][h] + heads.bias[...][h], rtol=1e-5)


def test_hidden_layer_heads_on_flattened_features_train_end_to_end(data_dir, tmp_path):
  config = make_tiny_config(data_dir)
  config.model.name = "cnn"  # configs/digits.py:cnn,tiny — 8x8 digits, block_1 is (4, 4, 16)
  config.num_epochs, config.max_steps_per_epoch = 1, 4
  config.rlp.update(pool="flatten", hidden_dim=4, num_heads=2, reg_lambda=0.1)
  config.probes.layers = "all"
  config.eval.train_examples = 256
  config.offline.update(num_epochs=1, batch_size=64, train_examples=128)
  result = loop.train_and_evaluate(config, str(tmp_path))
  experiment, state, metrics = result["experiment"], result["state"], result["metrics"]

  flat = {"block_1": 4 * 4 * 16, "block_2": 2 * 2 * 32, "pre_logits": 32}
  assert experiment.rlp_layers == ("block_1", "pre_logits") and dict(experiment.feature_dims) == flat
  for name in experiment.rlp_layers:
    head = state.params["rlp"]["layers"][name]
    assert {k: v.shape for k, v in head.items()} == {
      "hidden": (2, flat[name], 4),
      "hidden_bias": (2, 4),
      "kernel": (2, 4, 10),
      "bias": (2, 10),
    }
  for name, dim in flat.items():  # the probes are linear, on the same flattened features
    probe = state.params["probes"]["layers"][name]
    assert {k: v.shape for k, v in probe.items()} == {"kernel": (1, dim, 10), "bias": (1, 10)}

  # Every metric is finite, and each head reports its random-label accuracy beside chance.
  assert all(np.isfinite(v) for v in metrics.values()), metrics
  for name in experiment.rlp_layers:
    for key in ("accuracy", "chance", "chance_corrected", "head_0/accuracy", "head_1/accuracy"):
      assert f"rlp/{name}/{key}" in metrics, key
    assert 0.0 <= metrics[f"rlp/{name}/accuracy"] <= 1.0 and metrics[f"rlp/{name}/chance"] == 0.1
  assert metrics["loss/reg"] > 0
  assert result["collapse"] is None  # a mild λ (training/health.py)
  # The offline control trains the same variant on the frozen initial network's flattened features.
  offline = result["offline_at_init"]
  assert set(offline) == set(experiment.rlp_layers)
  assert all(v.shape == (2,) and np.all((0 <= v) & (v <= 1)) for v in offline.values()), offline

  # Both layers of the heads learned (the hidden layer is not silently detached).
  init = nnx.state(
    heads_lib.build_heads(config, experiment.feature_dims, experiment.rlp_layers, experiment.num_labels)
  )
  init = init.to_pure_dict()["layers"]
  for name in experiment.rlp_layers:
    for leaf in ("hidden", "kernel"):
      trained = jax.device_get(state.params["rlp"]["layers"][name][leaf])
      assert not np.allclose(trained, init[name][leaf]), (name, leaf)
