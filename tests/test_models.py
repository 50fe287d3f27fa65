"""Fast CPU tests for the model zoo's shared contract (see rlp_jax.models)."""

import functools
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from rlp_jax.models import MODEL_NAMES, create_model

NUM_CLASSES = 5
# name -> (depth, number of sown blocks); WRN always has 3 groups.
DEPTHS = {'mlp': (2, 2), 'cnn': (2, 2), 'wrn': (10, 3)}
SHAPES = [(8, 8, 1), (40, 1)]


@functools.lru_cache(maxsize=None)
def _build(name, input_shape, depth, dropout):
    cfg = ml_collections.ConfigDict(dict(name=name, width=2, depth=depth, dropout=dropout))
    return create_model(cfg, NUM_CLASSES, input_shape, nnx.Rngs(0))


def make(name, input_shape=(8, 8, 1), *, depth=None, dropout=0.5):
    """A fresh copy of a cached model: on CPU, init is dominated by compiling
    one RNG kernel per parameter shape, so each config is only built once."""
    return nnx.clone(_build(name, input_shape, depth or DEPTHS[name][0], dropout))


def batch(input_shape, n=4, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, *input_shape))


def variable_types(model):
    leaves = jax.tree.leaves(nnx.state(model), is_leaf=lambda v: isinstance(v, nnx.Variable))
    return {type(v) for v in leaves}


def test_model_names():
    assert MODEL_NAMES == ('mlp', 'cnn', 'wrn')


@pytest.mark.parametrize('input_shape', SHAPES, ids=['2d', '1d'])
@pytest.mark.parametrize('name', MODEL_NAMES)
def test_logits_and_captured_intermediates(name, input_shape):
    model = make(name, input_shape)
    x = batch(input_shape)
    logits, inter = nnx.capture(model, nnx.Intermediate)(x)
    assert logits.shape == (4, NUM_CLASSES) and logits.dtype == jnp.float32

    k = DEPTHS[name][1]
    # Flat, top-level names: every value is a Variable directly under the root.
    assert set(inter.keys()) == {f'block_{i}' for i in range(1, k + 1)} | {'pre_logits'}
    for key, var in inter.items():
        assert isinstance(var, nnx.Intermediate), key
        value = var.get_value()
        assert isinstance(value, tuple) and len(value) == 1, key
        assert value[0].shape[0] == 4 and value[0].ndim in (2, 3, 4), key
    pre = inter['pre_logits'].get_value()[0]
    assert pre.ndim == 2
    # pre_logits is exactly what the class head sees.
    np.testing.assert_allclose(model.head(pre), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_head_params_and_pure_state(name):
    model = make(name)
    x = batch((8, 8, 1))
    with warnings.catch_warnings():
        warnings.simplefilter('error', DeprecationWarning)  # no sow outside capture
        model(x)
        model(x, train=True, rngs=nnx.Rngs(dropout=0))
    nnx.capture(model, nnx.Intermediate)(x)
    # Plain, train and captured calls leave only Param/BatchStat state behind,
    # so the training split is exhaustive.
    assert variable_types(model) <= {nnx.Param, nnx.BatchStat}
    _, params, _ = nnx.split(model, nnx.Param, nnx.BatchStat)

    paths = [p for p, _ in nnx.to_flat_state(params)]
    head = {p[1:]: v.shape for p, v in nnx.to_flat_state(params) if p[0] == 'head'}
    assert head == {('kernel',): (head[('kernel',)][0], NUM_CLASSES), ('bias',): (NUM_CLASSES,)}
    assert all('head' not in p[1:] for p in paths)  # φ = exactly the 'head' subtree


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_dropout_train_only(name):
    model = make(name)
    x = batch((8, 8, 1))
    y0 = model(x, train=True, rngs=nnx.Rngs(dropout=0))
    y1 = model(x, train=True, rngs=nnx.Rngs(dropout=1))
    assert not np.allclose(y0, y1)
    e0 = model(x)
    e1 = model(x, train=False, rngs=nnx.Rngs(dropout=1))
    np.testing.assert_array_equal(e0, e1)


@pytest.mark.parametrize('name', ['mlp', 'cnn'])
def test_zero_dropout_train_equals_eval(name):
    model = make(name, dropout=0.0)
    x = batch((8, 8, 1))
    np.testing.assert_allclose(model(x, train=True), model(x), rtol=1e-6)


def test_wrn_batch_stats_update_only_in_train():
    model = make('wrn')
    x = batch((8, 8, 1))

    def stats():
        return jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))

    before = stats()
    model(x)
    jax.tree.map(np.testing.assert_array_equal, before, stats())
    model(x, train=True)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, stats())
    assert all(jax.tree.leaves(changed))


def test_functional_jit_step():
    """The training pattern: jit over split state, dropout key passed per step."""
    model = make('wrn')
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    @jax.jit
    def step(params, stats, key, x):
        m = nnx.merge(graphdef, params, stats)
        logits, inter = nnx.capture(m, nnx.Intermediate)(
            x, train=True, rngs=nnx.Rngs(dropout=key)
        )
        return logits, inter['block_3'].get_value()[0], nnx.state(m, nnx.BatchStat)

    x = batch((8, 8, 1))
    logits, block3, new_stats = step(params, stats, jax.random.key(0), x)
    assert logits.shape == (4, NUM_CLASSES) and block3.shape == (4, 2, 2, 128)
    assert jax.tree.structure(new_stats) == jax.tree.structure(stats)


def test_wrn_16_4_param_count():
    cfg = ml_collections.ConfigDict(dict(name='wrn', width=4, depth=16, dropout=0.0))
    model = nnx.eval_shape(lambda: create_model(cfg, 100, (32, 32, 3), nnx.Rngs(0)))
    n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    # Published: 2.7M (Zagoruyko & Komodakis 2016, Table 4); we measure 2,772,020.
    assert 2.70e6 <= n <= 2.80e6, n


def test_wrn_strides_skip_singleton_dims():
    logits, inter = nnx.capture(make('wrn', (8, 1, 1)), nnx.Intermediate)(batch((8, 1, 1)))
    assert inter['block_3'].get_value()[0].shape == (4, 2, 1, 128)
    assert logits.shape == (4, NUM_CLASSES)


@pytest.mark.parametrize('depth', [15, 4])
def test_wrn_bad_depth(depth):
    with pytest.raises(ValueError, match='depth'):
        make('wrn', depth=depth)


@pytest.mark.parametrize('name', ['mlp', 'cnn'])
def test_bad_depth(name):
    with pytest.raises(ValueError, match='depth'):
        make(name, depth=-1)


def test_unknown_name():
    cfg = ml_collections.ConfigDict(dict(name='vit', width=2, depth=2, dropout=0.0))
    with pytest.raises(ValueError, match=r'config\.model\.name.*mlp, cnn, wrn'):
        create_model(cfg, NUM_CLASSES, (8, 8, 1), nnx.Rngs(0))
