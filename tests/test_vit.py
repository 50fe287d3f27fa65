"""ViT: sown shapes, variants' parameter counts, bf16 numerics, and RLP heads on every block training."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from rlp_jax import models
from rlp_jax.data import input_pipeline
from rlp_jax.models import vit
from rlp_jax.training import experiment as experiment_lib
from rlp_jax.training import steps

NUM_CLASSES = 5


def vit_config(**overrides) -> ml_collections.ConfigDict:
  """A tiny ViT: 3 blocks of width 32 with 2 heads (the variant only names what is not overridden)."""
  cfg = dict(
    name="vit",
    width=32,
    depth=3,
    dropout=0.0,
    variant="Ti",
    patch_size=4,
    num_heads=2,
    dtype="float32",
    classifier="token",
  )
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def key(seed):
  return jax.random.key(seed, impl="rbg")


@functools.cache
def _model(input_shape, **overrides):
  cfg = vit_config(**overrides)
  return nnx.split(
    models.create_model(cfg, NUM_CLASSES, input_shape, nnx.Rngs(key(0))), nnx.Param, nnx.BatchStat
  )


def forward(input_shape, x, *, train=False, dropout_key=None, **overrides):
  """Jitted functional forward: (logits, {sown name: value}); one compilation per model config."""
  model_def, params, stats = _model(input_shape, **overrides)
  fn = jax.jit(functools.partial(models.apply, model_def), static_argnames="train")
  logits, feats, _ = fn(params.to_pure_dict(), stats.to_pure_dict(), x, train=train, dropout_key=dropout_key)
  return logits, feats


@pytest.mark.parametrize(
  "input_shape,classifier,tokens",
  [((8, 8, 3), "token", 4 + 1), ((32, 32, 3), "token", 64 + 1), ((32, 32, 3), "gap", 64)],
)
def test_every_block_is_sown_with_its_token_map(input_shape, classifier, tokens):
  x = jax.random.normal(key(1), (2, *input_shape))
  logits, feats = forward(input_shape, x, classifier=classifier)
  assert logits.shape == (2, NUM_CLASSES) and logits.dtype == jnp.float32
  assert {k: v.shape for k, v in feats.items()} == {
    "block_01": (2, tokens, 32),
    "block_02": (2, tokens, 32),
    "block_03": (2, tokens, 32),
    "pre_logits": (2, 32),
  }
  assert list(feats) == ["block_01", "block_02", "block_03", "pre_logits"]  # sown in depth order
  assert all(np.isfinite(np.asarray(v)).all() for v in feats.values())


def test_block_names_are_zero_padded_and_sort_by_depth():
  assert [vit.block_name(i, 12) for i in (1, 9, 12)] == ["block_01", "block_09", "block_12"]
  assert vit.block_name(7, 100) == "block_007"


def test_pre_logits_is_what_the_head_sees_and_state_is_pure():
  model = models.create_model(vit_config(dropout=0.1), NUM_CLASSES, (8, 8, 3), nnx.Rngs(key(0)))
  # The head is zero-initialized (big_vision); give it weights so the comparison is not 0 == 0.
  model.head.kernel[...] = jax.random.normal(key(2), model.head.kernel.shape)
  x = jax.random.normal(key(1), (2, 8, 8, 3))
  logits, inter = nnx.capture(model, nnx.Intermediate)(x)
  np.testing.assert_allclose(model.head(inter["pre_logits"].get_value()[0]), logits, rtol=1e-5, atol=1e-5)
  with warnings.catch_warnings():
    warnings.simplefilter("error", DeprecationWarning)  # no sow outside capture
    model(x)
    model(x, train=True, rngs=nnx.Rngs(dropout=key(0)))
  leaves = jax.tree.leaves(nnx.state(model), is_leaf=lambda v: isinstance(v, nnx.Variable))
  assert {type(v) for v in leaves} == {nnx.Param}
  head = {p[1:] for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)) if p[0] == "head"}
  assert head == {("kernel",), ("bias",)}


def test_dropout_acts_in_train_mode_only():
  shape = (8, 8, 3)
  x = jax.random.normal(key(1), (2, *shape))
  _, a = forward(shape, x, train=True, dropout_key=key(0), dropout=0.3)
  _, b = forward(shape, x, train=True, dropout_key=key(1), dropout=0.3)
  _, e = forward(shape, x, dropout=0.3)
  _, e0 = forward(shape, x, dropout=0.0)
  assert not np.allclose(a["pre_logits"], b["pre_logits"])
  np.testing.assert_array_equal(e["pre_logits"], e0["pre_logits"])  # same init, dropout off in eval


# Published sizes (timm / the ViT paper's tables, 1000 classes at 224x224): B/32 88.22M, S/16 22.05M,
# Ti/16 5.72M. We count exactly, from shapes only (nothing is materialized).
@pytest.mark.parametrize(
  "variant,patch,expected",
  [("B", 32, 88_224_232), ("S", 16, 22_050_664), ("Ti", 16, 5_717_416), ("B", 16, 86_567_656)],
)
def test_variant_parameter_counts(variant, patch, expected):
  cfg = ml_collections.ConfigDict(
    dict(name="vit", width=0, depth=0, dropout=0.0, variant=variant, patch_size=patch)
  )
  model = nnx.eval_shape(lambda: models.create_model(cfg, 1000, (224, 224, 3), nnx.Rngs(0)))
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert n == expected
  width, depth, heads = vit.VARIANTS[variant]
  assert len(model.blocks) == depth and model.head.kernel.shape == (width, 1000)


def test_vit_s4_on_cifar100_shapes_only():
  cfg = ml_collections.ConfigDict(dict(name="vit", width=0, depth=0, dropout=0.0, variant="S", patch_size=4))

  def run(x):
    model = models.create_model(cfg, 100, (32, 32, 3), nnx.Rngs(0))
    return nnx.capture(model, nnx.Intermediate)(x)

  logits, inter = jax.eval_shape(run, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  names = sorted(inter)
  assert names == [f"block_{i:02d}" for i in range(1, 13)] + ["pre_logits"]
  assert inter["block_12"].get_value()[0].shape == (2, 65, 384) and logits.shape == (2, 100)


def test_bfloat16_compute_keeps_params_features_and_logits_float32():
  shape = (32, 32, 3)
  x = jax.random.normal(key(1), (2, *shape))
  model_def, params, stats = _model(shape, dtype="bfloat16")
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  logits, feats = forward(shape, x, dtype="bfloat16")
  _, ref = forward(shape, x, dtype="float32")  # same init (same seed), float32 compute
  assert logits.dtype == jnp.float32
  for name, value in feats.items():
    assert value.dtype == jnp.float32, name
    np.testing.assert_allclose(value, ref[name], rtol=0.1, atol=0.1)
  # ... and the matmuls really ran in bf16 (otherwise the two runs would agree to float32 precision).
  assert not np.allclose(feats["pre_logits"], ref["pre_logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "overrides,message",
  [
    (dict(variant="XL"), "config.model.variant"),
    (dict(dtype="float16"), "config.model.dtype"),
    (dict(num_heads=3), "config.model.num_heads"),
    (dict(patch_size=3), "config.model.patch_size"),
    (dict(classifier="map"), "config.model.classifier"),
  ],
)
def test_bad_vit_config_names_the_key(overrides, message):
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    models.create_model(vit_config(**overrides), NUM_CLASSES, (8, 8, 3), nnx.Rngs(0))


def test_rlp_heads_on_every_block_train(tiny_config):
  """Heads (LayerNorm + dense) on all blocks of a tiny ViT learn their random labels; λ > 0 stays finite."""
  config = tiny_config
  config.model = vit_config(patch_size=4)  # digits: 8x8x1 images -> 4 patches + class token
  config.optimizer.name, config.optimizer.learning_rate, config.optimizer.warmup_epochs = "adamw", 1e-3, 0.0
  config.rlp.layers = "all"
  config.rlp.reg_layers = "block_02"
  config.rlp.reg_lambda = 0.1
  config.rlp.norm_layers = "all"
  config.rlp.num_heads = 2
  config.rlp.optimizer.learning_rate = 1e-2
  config.probes.layers = ""
  experiment, state = experiment_lib.build(config)
  assert experiment.sown_layers == ("block_01", "block_02", "block_03", "pre_logits")
  assert experiment.rlp_layers == experiment.sown_layers and experiment.reg_layers == ("block_02",)
  step = steps.make_train_step(experiment)
  batch = experiment_lib.device_batch(
    experiment, next(input_pipeline.train_batches(config, experiment.info, epoch=0))
  )
  losses = []
  for _ in range(15):  # the same batch: the heads must fit its random labels
    before = jax.device_get(state.loss_sums)
    state = step(state, batch)
    after = jax.device_get(state.loss_sums)
    losses.append({k: float(after[k] - before[k]) for k in after})
  assert all(np.isfinite(v) for loss in losses for v in loss.values())
  assert losses[-1]["loss/rnd"] < 0.8 * losses[0]["loss/rnd"], [x["loss/rnd"] for x in losses]
  assert losses[-1]["loss/class"] < losses[0]["loss/class"], [x["loss/class"] for x in losses]
