"""Fast CPU tests for the model zoo's shared contract (see rlp_jax.models)."""

import functools
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from rlp_jax import models
from rlp_jax.infra import model_registry
from rlp_jax.models import create_model

NUM_CLASSES = 5
# name -> (depth, number of sown blocks); WRN always has 3 groups.
DEPTHS = {"mlp": (2, 2), "cnn": (2, 2), "wrn": (10, 3)}
SHAPES = [(8, 8, 1), (40, 1)]


def key(seed):
  """An RBG key: on CPU, threefry kernels dominate test time (one compile per
  parameter or dropout-mask shape); XLA's RngBitGenerator compiles much faster."""
  return jax.random.key(seed, impl="rbg")


@functools.cache
def _build(name, input_shape, depth, dropout):
  cfg = ml_collections.ConfigDict(dict(name=name, width=2, depth=depth, dropout=dropout))
  return create_model(cfg, NUM_CLASSES, input_shape, nnx.Rngs(key(0)))


def make(name, input_shape=(8, 8, 1), *, depth=None, dropout=0.5):
  """A fresh copy of a cached model, so each config is initialized only once."""
  return nnx.clone(_build(name, input_shape, depth or DEPTHS[name][0], dropout))


def batch(input_shape, n=4, seed=0):
  return jax.random.normal(key(seed), (n, *input_shape))


def variable_types(model):
  leaves = jax.tree.leaves(nnx.state(model), is_leaf=lambda v: isinstance(v, nnx.Variable))
  return {type(v) for v in leaves}


# The shared-contract tests below run on 1-D and tiny 2-D inputs with width 2 and unpadded block names;
# the ViT (2-D images, zero-padded block_01.. names) has its own tests in tests/test_vit.py.
GENERIC = tuple(n for n in model_registry.names() if n != "vit")


@pytest.mark.parametrize("input_shape", SHAPES, ids=["2d", "1d"])
@pytest.mark.parametrize("name", GENERIC)
def test_logits_and_captured_intermediates(name, input_shape):
  model = make(name, input_shape)
  x = batch(input_shape)
  # Jitted (one compilation instead of op-by-op dispatch); the model's state is only read.
  logits, inter = nnx.jit(lambda model, x: nnx.capture(model, nnx.Intermediate)(x))(model, x)
  assert logits.shape == (4, NUM_CLASSES) and logits.dtype == jnp.float32

  k = DEPTHS[name][1]
  # Flat, top-level names: every value is a Variable directly under the root.
  assert set(inter.keys()) == {f"block_{i}" for i in range(1, k + 1)} | {"pre_logits"}
  for layer, var in inter.items():
    assert isinstance(var, nnx.Intermediate), layer
    value = var.get_value()  # sow appends to a tuple: one entry per call
    assert isinstance(value, tuple) and len(value) == 1, layer
    assert value[0].shape[0] == 4 and value[0].ndim in (2, 3, 4), layer
  pre = inter["pre_logits"].get_value()[0]
  assert pre.ndim == 2
  # pre_logits is exactly what the class head sees.
  np.testing.assert_allclose(model.head(pre), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", GENERIC)
def test_head_params_and_pure_state(name):
  model = make(name)
  x = batch((8, 8, 1))
  with warnings.catch_warnings():
    warnings.simplefilter("error", DeprecationWarning)  # no sow outside capture
    model(x)
    model(x, train=True, rngs=nnx.Rngs(dropout=key(0)))
  nnx.capture(model, nnx.Intermediate)(x)
  # Plain, train and captured calls leave only Param/BatchStat state behind,
  # so the training split is exhaustive.
  assert variable_types(model) <= {nnx.Param, nnx.BatchStat}
  _, params, _ = nnx.split(model, nnx.Param, nnx.BatchStat)

  # φ is exactly the top-level 'head' subtree: a Dense layer onto the classes.
  head = {p[1:]: v.shape for p, v in nnx.to_flat_state(params) if p[0] == "head"}
  assert set(head) == {("kernel",), ("bias",)}
  assert head[("kernel",)][-1] == NUM_CLASSES and head[("bias",)] == (NUM_CLASSES,)


@pytest.mark.parametrize("name", GENERIC)
def test_dropout_train_only(name):
  model = make(name)
  x = batch((8, 8, 1))
  y0 = model(x, train=True, rngs=nnx.Rngs(dropout=key(0)))
  y1 = model(x, train=True, rngs=nnx.Rngs(dropout=key(1)))
  assert not np.allclose(y0, y1)
  e0 = model(x)
  e1 = model(x, train=False, rngs=nnx.Rngs(dropout=key(1)))
  np.testing.assert_array_equal(e0, e1)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_zero_dropout_train_equals_eval(name):
  model = make(name, dropout=0.0)
  x = batch((8, 8, 1))
  np.testing.assert_allclose(model(x, train=True), model(x), rtol=1e-6)


def test_wrn_batch_stats_update_only_in_train():
  model = make("wrn")
  x = batch((8, 8, 1))

  def stats():
    return jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))

  before = stats()
  model(x)
  jax.tree.map(np.testing.assert_array_equal, before, stats())
  model(x, train=True, rngs=nnx.Rngs(dropout=key(0)))
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, stats())
  assert all(jax.tree.leaves(changed))


def test_functional_apply_under_jit():
  """The training pattern: jit over pure-dict split state, dropout key passed per step."""
  model = make("wrn")
  model_def, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  params, stats = params.to_pure_dict(), stats.to_pure_dict()
  step = jax.jit(functools.partial(models.apply, model_def), static_argnames="train")

  x = batch((8, 8, 1))
  logits, feats, new_stats = step(params, stats, x, train=True, dropout_key=key(0))
  assert logits.shape == (4, NUM_CLASSES)
  assert {k: v.shape for k, v in feats.items()} == {
    "block_1": (4, 8, 8, 32),
    "block_2": (4, 4, 4, 64),
    "block_3": (4, 2, 2, 128),
    "pre_logits": (4, 128),
  }
  assert jax.tree.structure(new_stats) == jax.tree.structure(stats)
  assert not np.allclose(new_stats["bn"]["mean"], stats["bn"]["mean"])


def test_wrn_16_4_param_count():
  cfg = ml_collections.ConfigDict(dict(name="wrn", width=4, depth=16, dropout=0.0))
  model = nnx.eval_shape(lambda: create_model(cfg, 100, (32, 32, 3), nnx.Rngs(0)))
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  # Published: 2.7M (Zagoruyko & Komodakis 2016, Table 4); we measure 2,772,020.
  assert 2.70e6 <= n <= 2.80e6, n


def test_wrn_strides_skip_singleton_dims():
  cfg = ml_collections.ConfigDict(dict(name="wrn", width=2, depth=10, dropout=0.0))

  def forward(x):
    model = create_model(cfg, NUM_CLASSES, (8, 1, 1), nnx.Rngs(0))
    return nnx.capture(model, nnx.Intermediate)(x)

  # Shapes only: nothing is compiled or run.
  logits, inter = jax.eval_shape(forward, jax.ShapeDtypeStruct((4, 8, 1, 1), jnp.float32))
  assert inter["block_3"].get_value()[0].shape == (4, 2, 1, 128)
  assert logits.shape == (4, NUM_CLASSES)


@pytest.mark.parametrize("depth", [15, 4])
def test_wrn_bad_depth(depth):
  with pytest.raises(ValueError, match="depth"):
    make("wrn", depth=depth)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_bad_depth(name):
  with pytest.raises(ValueError, match="depth"):
    make(name, depth=-1)


def test_unknown_name():
  cfg = ml_collections.ConfigDict(dict(name="resnet", width=2, depth=2, dropout=0.0))
  with pytest.raises(ValueError, match=r"config\.model\.name.*mlp, cnn, wrn, vit"):
    create_model(cfg, NUM_CLASSES, (8, 8, 1), nnx.Rngs(0))
