"""Sharded equals single-device, on 8 simulated CPU devices.

JAX fixes its device count at start-up, so when this process has fewer than 8 devices the whole file is
re-run in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (that is the one test
that runs here); the real tests are skipped in the parent and run in the child.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import make_tiny_config
from flax import nnx

from rlp_jax.data import input_pipeline
from rlp_jax.heads import head_loss, metrics, routing
from rlp_jax.heads import heads as heads_lib
from rlp_jax.infra import mesh as mesh_lib
from rlp_jax.perf import flops
from rlp_jax.training import experiment, steps

EIGHT = jax.device_count() >= 8
needs_eight = pytest.mark.skipif(not EIGHT, reason="runs in the 8-device subprocess")


@pytest.mark.skipif(EIGHT, reason="this process already has 8 devices")
def test_sharded_suite_on_8_simulated_cpu_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run(
    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
  assert " passed" in proc.stdout and "skipped" in proc.stdout  # the real tests ran there


def _mesh(data, model):
  cfg = ml_collections.ConfigDict(dict(data=data, model=model))
  return mesh_lib.make_mesh(cfg)


@needs_eight
@pytest.mark.parametrize(
  "shape,per_head,chunk", [((8, 1), False, 0), ((4, 2), True, 0), ((2, 4), False, 4), ((1, 8), True, 8)]
)
def test_sharded_head_stats_equal_full_logits(shape, per_head, chunk):
  """Values and gradients of the label-sharded (and, within a device, chunked) statistics."""
  mesh = _mesh(*shape)
  b, h, d, n, valid = 16, 3, 5, 64, 61  # 3 padded labels, all on the last shard
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], (b, h, d) if per_head else (b, d))
  w = jax.random.normal(keys[1], (h, d, n))
  bias = jax.random.normal(keys[2], (h, n))
  y = jax.random.randint(keys[3], (b, h), 0, valid)
  x = x.at[0].multiply(300.0)  # saturated rows: p_y ≈ 1 or ≈ 0
  logits = head_loss.mask_padding(head_loss.dense(x, w, bias), valid)
  y = y.at[1:5].set(jnp.argmax(logits[1:5], -1))  # some correct

  def full(x, w, bias):
    s = head_loss.mask_padding(head_loss.dense(x, w, bias), valid)
    return routing.cross_entropy(s, y), routing.log1m_softmax(s, y), metrics.head_correct(s, y)

  def sharded(x, w, bias):
    return head_loss.head_stats(x, w, bias, y, num_valid=valid, chunk=chunk, mesh=mesh)

  got = jax.jit(sharded)(x, w, bias)
  for a, e in zip(got, full(x, w, bias)):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=2e-5, atol=2e-4)
  assert np.asarray(got[2]).any()

  def scalar(fn):
    return lambda *args: (lambda ce, l1m, _: ce.mean() - 0.3 * l1m.mean())(*fn(*args))

  g_full = jax.grad(scalar(full), argnums=(0, 1, 2))(x, w, bias)
  g_shard = jax.jit(jax.grad(scalar(sharded), argnums=(0, 1, 2)))(x, w, bias)
  for a, e in zip(g_shard, g_full):
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a, e, rtol=2e-4, atol=2e-5)

  # One evaluation, two routes (routing.routed_losses): ce through the first input set, log1m the second.
  def split(first, second):
    return head_loss.head_stats(*first, y, log1m_inputs=second, num_valid=valid, chunk=chunk, mesh=mesh)

  g_first, g_second = jax.jit(jax.grad(scalar(split), argnums=(0, 1)))((x, w, bias), (x, w, bias))
  g_ce = jax.grad(lambda *a: full(*a)[0].mean(), argnums=(0, 1, 2))(x, w, bias)
  g_l1m = jax.grad(lambda *a: -0.3 * full(*a)[1].mean(), argnums=(0, 1, 2))(x, w, bias)
  for got, want in ((g_first, g_ce), (g_second, g_l1m)):
    for a, e in zip(got, want):
      np.testing.assert_allclose(a, e, rtol=2e-4, atol=2e-5)

  # Sharding splits the matmuls, it does not add any: counted over all devices, the same FLOPs.
  def unsharded(x, w, bias):
    return head_loss.head_stats(x, w, bias, y, num_valid=valid, chunk=chunk)

  count = lambda fn: flops.count(jax.grad(scalar(fn), argnums=(0, 1, 2)), x, w, bias)
  assert count(sharded) == count(unsharded) > 0


def _tiny(config):
  config.rlp.num_labels = 16
  config.rlp.num_heads = 2
  config.rlp.layers = "all"
  config.rlp.reg_lambda = 0.5
  config.probes.layers = "pre_logits"
  config.model.dropout = 0.0
  config.optimizer.grad_clip_norm = 1.0
  return config


def _steps(config, devices, num_steps=3):
  exp, state = experiment.build(config, devices=devices)
  step = steps.make_train_step(exp)
  eval_step = steps.make_eval_step(exp)
  batches = input_pipeline.train_batches(config, exp.info, epoch=0)
  for _ in range(num_steps):
    batch = next(batches)
    state = step(state, experiment.device_batch(exp, batch))
  ev = next(input_pipeline.eval_batches(config, exp.info, "train_eval"))
  metrics = eval_step(state.params, state.batch_stats, experiment.device_batch(exp, ev))
  return exp, state, jax.device_get(metrics)


@pytest.fixture(scope="module")
def single_device_run(data_dir):
  config = _tiny(make_tiny_config(data_dir))
  return _steps(config, jax.devices()[:1])


@needs_eight
@pytest.mark.parametrize(
  "shape,fsdp,chunk", [((8, 1), False, 0), ((4, 2), True, 0), ((2, 4), False, 0), ((2, 4), False, 2)]
)
def test_sharded_train_steps_equal_single_device(tiny_config, single_device_run, shape, fsdp, chunk):
  config = _tiny(tiny_config)
  _, single, single_metrics = single_device_run
  config.mesh.data, config.mesh.model, config.mesh.fsdp = shape[0], shape[1], fsdp
  config.rlp.label_chunk = chunk  # 16 labels: 4 per device, in blocks of 2
  exp, sharded, sharded_metrics = _steps(config, None)
  assert exp.mesh.shape == {"data": shape[0], "model": shape[1]}
  assert exp.label_multiple == shape[1] * max(chunk, 1)
  for k in single.loss_sums:
    np.testing.assert_allclose(sharded.loss_sums[k], single.loss_sums[k], rtol=1e-5)
  close = jax.tree.map(
    lambda a, b: np.allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6),
    jax.device_get(sharded.params),
    jax.device_get(single.params),
  )
  assert all(jax.tree.leaves(close)), close
  for k in single_metrics:
    np.testing.assert_allclose(sharded_metrics[k], single_metrics[k], rtol=1e-5)  # counts: exact


@needs_eight
@pytest.mark.parametrize("model_axis", [1, 2, 4, 8])
def test_head_memory_per_device_shrinks_with_the_model_axis(tiny_config, model_axis):
  config = _tiny(tiny_config)
  config.rlp.num_labels = 1024
  config.mesh.data, config.mesh.model = 8 // model_axis, model_axis
  _, state = experiment.build(config)
  kernel = state.params["rlp"]["layers"]["pre_logits"]["kernel"]
  assert kernel.shape[-1] == 1024
  assert {s.data.shape[-1] for s in kernel.addressable_shards} == {1024 // model_axis}
  # The heads' optimizer moments are sharded like the heads.
  moments = [x for x in jax.tree.leaves(state.opt_state) if getattr(x, "shape", None) == kernel.shape]
  assert moments and all(m.sharding.shard_shape(m.shape)[-1] == 1024 // model_axis for m in moments)


@needs_eight
def test_mesh_errors_name_the_key(tiny_config):
  config = _tiny(tiny_config)
  config.mesh.data, config.mesh.model = 3, 2
  with pytest.raises(ValueError, match=r"config\.mesh"):
    experiment.build(config)
  config.mesh.data, config.mesh.model = -1, 1
  config.batch_size = 12
  with pytest.raises(ValueError, match=r"config\.batch_size=12"):
    experiment.build(config)


@needs_eight
def test_sharded_rlp_loss_is_used_and_matches_in_routed_losses():
  mesh = _mesh(2, 4)
  heads = heads_lib.LayerHeads({"pre_logits": 6}, 32, 2, norm=True, hidden_dim=0, rngs=nnx.Rngs(0))
  z = jax.random.normal(jax.random.key(1), (8, 6))
  y = jax.random.randint(jax.random.key(2), (8, 2), 0, 32)
  kw = dict(
    class_logits=jnp.zeros((8, 3)),
    features={"pre_logits": z},
    labels=jnp.zeros((8,), jnp.int32),
    rlp_labels=y,
    heads=heads,
    probes=None,
    reg_layers=("pre_logits",),
    reg_lambda=2.0,
  )
  total_full, parts_full = routing.routed_losses(**kw)
  total_sharded, parts_sharded = jax.jit(lambda: routing.routed_losses(**kw, mesh=mesh))()
  np.testing.assert_allclose(total_sharded, total_full, rtol=1e-5)
  np.testing.assert_allclose(parts_sharded["loss/reg"], parts_full["loss/reg"], rtol=1e-5)
  np.testing.assert_array_equal(
    parts_sharded["rnd_correct"]["pre_logits"], parts_full["rnd_correct"]["pre_logits"]
  )


@needs_eight
def test_checkpoint_restores_onto_a_different_mesh(tiny_config, tmp_path):
  from rlp_jax.training import checkpointing

  config = _tiny(tiny_config)
  config.rlp.num_labels = 64
  config.mesh.data, config.mesh.model = 8, 1
  _, saved = experiment.build(config)
  mngr = checkpointing.manager(str(tmp_path))
  checkpointing.save(mngr, 0, saved)
  config.mesh.data, config.mesh.model = 2, 4
  exp, target = experiment.build(config)
  restored = checkpointing.restore(mngr, 0, target)
  same = jax.tree.map(np.array_equal, jax.device_get(restored.params), jax.device_get(saved.params))
  assert all(jax.tree.leaves(same))
  kernel = restored.params["rlp"]["layers"]["pre_logits"]["kernel"]
  assert kernel.sharding.spec[-1] == "model" and kernel.sharding.mesh.shape == exp.mesh.shape


@needs_eight
def test_a_prime_number_of_labels_is_padded_and_sharded(tiny_config, single_device_run):
  """n = 13 over a model axis of 4: padded to 16 masked labels, same results as one device with n = 13."""
  config = _tiny(tiny_config)
  config.rlp.num_labels = 13
  _, single, single_metrics = _steps(config, jax.devices()[:1])
  config.mesh.data, config.mesh.model = 2, 4
  exp, sharded, sharded_metrics = _steps(config, None)
  assert exp.num_labels == 13 and exp.label_multiple == 4
  assert sharded.params["rlp"]["layers"]["pre_logits"]["kernel"].shape[-1] == 16
  assert single.params["rlp"]["layers"]["pre_logits"]["kernel"].shape[-1] == 13
  for k in single.loss_sums:
    np.testing.assert_allclose(sharded.loss_sums[k], single.loss_sums[k], rtol=1e-4)
  for k in single_metrics:
    np.testing.assert_allclose(sharded_metrics[k], single_metrics[k], rtol=1e-5)  # counts: exact
  # The padded labels are never predicted and get no gradient: their logits are -inf.
  heads = nnx.merge(exp.heads_def, sharded.params["rlp"])
  logits = heads.layers["pre_logits"](jnp.ones((2, exp.feature_dims["pre_logits"])))
  assert np.all(np.isneginf(np.asarray(logits[..., 13:])))
