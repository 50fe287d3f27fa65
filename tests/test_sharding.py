"""Sharded equals single-device, on 8 simulated CPU devices.

JAX fixes its device count at start-up, so when this process has fewer than 8 devices the whole file is
re-run in one subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (that is the one test
that runs here); the real tests are skipped in the parent and run in the child. The child reuses the
parent's tfds ``data_dir``, so the dataset is prepared once per session.
"""

from __future__ import annotations

import itertools
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
from test_head_loss import reference, value_and_grads

from rlp_jax.data import input_pipeline
from rlp_jax.heads import head_loss, label_axis, routing
from rlp_jax.heads import heads as heads_lib
from rlp_jax.infra import mesh as mesh_lib
from rlp_jax.perf import flops
from rlp_jax.training import checkpointing, steps
from rlp_jax.training import experiment as experiment_lib
from rlp_jax.training.evaluators import Evaluator

EIGHT = jax.device_count() >= 8
needs_eight = pytest.mark.skipif(not EIGHT, reason="runs in the 8-device subprocess")
_DATA_DIR_ENV = "RLP_TEST_SHARDING_DATA_DIR"


@pytest.fixture(scope="session")
def data_dir(data_dir):
  """conftest's data_dir, or in the 8-device child the parent's (already prepared there, or prepared once)."""
  return os.environ.get(_DATA_DIR_ENV, data_dir)


@pytest.mark.skipif(EIGHT, reason="this process already has 8 devices")
def test_sharded_suite_on_8_simulated_cpu_devices(data_dir):
  env = dict(
    os.environ,
    XLA_FLAGS=os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8",
    **{_DATA_DIR_ENV: data_dir},
  )
  proc = subprocess.run(
    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=5", __file__],
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
  assert " passed" in proc.stdout and "skipped" in proc.stdout  # the real tests ran there
  print(proc.stdout[-1500:])  # the child's slowest tests and summary (shown with -rP or -s)


def _mesh(data, model):
  cfg = ml_collections.ConfigDict(dict(data=data, model=model))
  return mesh_lib.make_mesh(cfg)


# ---------------------------------------------------------------------------------------------------
# The heads' statistics, label-sharded
# ---------------------------------------------------------------------------------------------------


@needs_eight
@pytest.mark.parametrize(
  "shape,per_head,chunk", [((8, 1), False, 0), ((4, 2), True, 0), ((2, 4), False, 4), ((1, 8), True, 8)]
)
def test_sharded_head_stats_equal_full_logits(shape, per_head, chunk):
  """Values and gradients of the label-sharded (and, within a device, chunked) statistics, against
  autodiff of the full logits (test_head_loss.reference)."""
  mesh = _mesh(*shape)
  b, h, d, n, valid = 16, 3, 5, 64, 61  # 3 padded labels, all on the last shard
  keys = jax.random.split(jax.random.key(0), 6)
  x = jax.random.normal(keys[0], (b, h, d) if per_head else (b, d))
  w = jax.random.normal(keys[1], (h, d, n))
  bias = jax.random.normal(keys[2], (h, n))
  y = jax.random.randint(keys[3], (b, h), 0, valid)
  x = x.at[0].multiply(300.0)  # saturated rows: p_y ≈ 1 or ≈ 0
  logits = label_axis.mask_padding(label_axis.dense(x, w, bias), valid)
  y = y.at[1:5].set(jnp.argmax(logits[1:5], -1))  # some correct
  g_ce, g_l1m = jax.random.normal(keys[4], (b, h)), jax.random.normal(keys[5], (b, h))
  zeros = jnp.zeros_like(g_ce)

  def sharded(x, w, bias):
    return head_loss.head_stats(x, w, bias, y, num_valid=valid, label_chunk=chunk, mesh=mesh)

  ours, ref = value_and_grads(sharded), value_and_grads(lambda *a: reference(*a, y, valid))
  (got, grads), (want, want_grads) = ours(x, w, bias, g_ce, g_l1m), ref(x, w, bias, g_ce, g_l1m)
  for a, e in zip(got, want):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=2e-5, atol=2e-4)
  assert np.asarray(got[2]).any()
  for a, e in zip(grads, want_grads):
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a, e, rtol=2e-4, atol=2e-5)

  # One evaluation, two routes (routing.routed_losses): ce through the first input set, log1m the second.
  split = value_and_grads(
    lambda first, second: head_loss.head_stats(
      *first, y, log1m_inputs=second, num_valid=valid, label_chunk=chunk, mesh=mesh
    ),
    argnums=(0, 1),
  )
  _, (g_first, g_second) = split((x, w, bias), (x, w, bias), g_ce, g_l1m)
  for got_set, cts in ((g_first, (g_ce, zeros)), (g_second, (zeros, g_l1m))):
    for a, e in zip(got_set, ref(x, w, bias, *cts)[1]):
      np.testing.assert_allclose(a, e, rtol=2e-4, atol=2e-5)

  # Sharding splits the matmuls, it does not add any: counted over all devices, the same FLOPs.
  def scalar(mesh):
    return lambda *a: (lambda ce, l1m, _: ce.mean() - 0.3 * l1m.mean())(
      *head_loss.head_stats(*a, y, num_valid=valid, label_chunk=chunk, mesh=mesh)
    )

  count = lambda mesh: flops.count(jax.grad(scalar(mesh), argnums=(0, 1, 2)), x, w, bias)
  assert count(mesh) == count(None) > 0


@needs_eight
def test_routed_losses_use_the_label_sharded_statistics_and_match():
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
  full = lambda: routing.routed_losses(**kw)
  sharded = lambda: routing.routed_losses(**kw, mesh=mesh)
  assert "shard_map" in str(jax.make_jaxpr(sharded)()) and "shard_map" not in str(jax.make_jaxpr(full)())
  (total_full, parts_full), (total_sharded, parts_sharded) = jax.jit(full)(), jax.jit(sharded)()
  np.testing.assert_allclose(total_sharded, total_full, rtol=1e-5)
  np.testing.assert_allclose(parts_sharded["loss/reg"], parts_full["loss/reg"], rtol=1e-5)
  np.testing.assert_array_equal(
    parts_sharded["rnd_correct"]["pre_logits"], parts_full["rnd_correct"]["pre_logits"]
  )


# ---------------------------------------------------------------------------------------------------
# Whole train steps and evaluations
# ---------------------------------------------------------------------------------------------------


def _tiny(config):
  # n = 13 is prime: every label-sharded mesh below pads it (to 14 or 16 masked labels).
  config.rlp.num_labels = 13
  config.rlp.num_heads = 2
  config.rlp.layers = "all"
  config.rlp.reg_lambda = 0.5
  config.probes.layers = "pre_logits"
  config.model.dropout = 0.0
  # 512 x 512 = 2^18 weights: the one size at which config.mesh.fsdp splits a matrix (sharding.py).
  config.model.width = 512
  config.optimizer.grad_clip_norm = 1.0
  config.eval.train_examples = 256  # one eval batch of the train subset
  return config


def _run(config, devices, num_steps=3):
  experiment, state = experiment_lib.build(config, devices=devices)
  step = steps.make_train_step(experiment)
  batches = [
    experiment_lib.device_batch(experiment, b)
    for b in itertools.islice(input_pipeline.train_batches(config, experiment.info, epoch=0), num_steps)
  ]
  # Whether the heads' statistics are label-sharded (a shard_map in the step), before the state is donated.
  label_sharded = "shard_map" in str(jax.make_jaxpr(step)(state, batches[0]))
  for batch in batches:
    state = step(state, batch)
  metrics = Evaluator(experiment)(state.params, state.batch_stats, epoch=0)
  return experiment, state, metrics, label_sharded


@pytest.fixture(scope="module")
def single_device_run(data_dir):
  return _run(_tiny(make_tiny_config(data_dir)), jax.devices()[:1])


@needs_eight
@pytest.mark.parametrize(
  "shape,fsdp,chunk,padded", [((8, 1), False, 0, 13), ((4, 2), True, 0, 14), ((2, 4), False, 2, 16)]
)
def test_sharded_train_steps_equal_single_device(tiny_config, single_device_run, shape, fsdp, chunk, padded):
  """Data parallel; label-sharded heads with FSDP; label-sharded heads in label chunks — each equal to one
  device: loss sums, parameters after 3 steps, and the evaluation (class, random-label and probe
  accuracy). n = 13 is padded to a multiple of model x chunk with masked labels, which change nothing."""
  _, single, single_metrics, single_label_sharded = single_device_run
  config = _tiny(tiny_config)
  config.mesh.data, config.mesh.model, config.mesh.fsdp = shape[0], shape[1], fsdp
  config.rlp.label_chunk = chunk  # 13 labels padded to 16: 4 per device, in blocks of 2
  experiment, sharded, sharded_metrics, label_sharded = _run(config, None)
  assert experiment.mesh.shape == {"data": shape[0], "model": shape[1]}
  assert experiment.num_labels == 13 and experiment.label_multiple == shape[1] * max(chunk, 1)
  assert label_sharded == (shape[1] > 1) and not single_label_sharded

  # The heads' label axis (and its optimizer moments) is split over the model axis.
  kernel = sharded.params["rlp"]["layers"]["pre_logits"]["kernel"]
  assert kernel.shape[-1] == padded
  assert {s.data.shape[-1] for s in kernel.addressable_shards} == {padded // shape[1]}
  moments = [x for x in jax.tree.leaves(sharded.opt_state) if getattr(x, "shape", None) == kernel.shape]
  assert moments and all(m.sharding.shard_shape(m.shape)[-1] == padded // shape[1] for m in moments)
  # FSDP splits the 512 x 512 weight over the data axis (so this case does test FSDP).
  specs = [x.sharding.spec for x in jax.tree.leaves(sharded.params["model"])]
  assert any("data" in spec for spec in specs) == fsdp

  for k in single.loss_sums:
    np.testing.assert_allclose(sharded.loss_sums[k], single.loss_sums[k], rtol=1e-5)
  # The padded heads' valid labels equal the unpadded heads; their padded labels are never predicted (logit
  # -inf) and never learn (their weights are still the zeros they were initialized to).
  trimmed = lambda a, b: np.asarray(a)[tuple(slice(0, k) for k in np.shape(b))]
  close = jax.tree.map(
    lambda a, b: np.allclose(trimmed(a, b), np.asarray(b), rtol=1e-4, atol=1e-6),
    jax.device_get(sharded.params),
    jax.device_get(single.params),
  )
  assert all(jax.tree.leaves(close)), close
  head = jax.device_get(sharded.params["rlp"]["layers"]["pre_logits"])
  assert not np.any(head["kernel"][..., 13:]) and not np.any(head["bias"][..., 13:])
  logits = nnx.merge(experiment.heads_def, sharded.params["rlp"]).layers["pre_logits"](jnp.ones((2, 512)))
  assert np.all(np.isneginf(np.asarray(logits[..., 13:])))
  assert set(sharded_metrics) == set(single_metrics)
  for k in single_metrics:
    np.testing.assert_allclose(sharded_metrics[k], single_metrics[k], rtol=1e-5)  # accuracies: counts


@needs_eight
@pytest.mark.parametrize("model_axis", [1, 2, 4, 8])
def test_head_memory_per_device_shrinks_with_the_model_axis(tiny_config, model_axis):
  """The shardings build() lays the state out with (abstract: nothing is allocated or compiled)."""
  config = _tiny(tiny_config)
  config.rlp.num_labels = 1024
  config.mesh.data, config.mesh.model = 8 // model_axis, model_axis
  _, state = experiment_lib.build(config, abstract=True)
  kernel = state.params["rlp"]["layers"]["pre_logits"]["kernel"]
  assert kernel.shape[-1] == 1024
  assert kernel.sharding.shard_shape(kernel.shape)[-1] == 1024 // model_axis
  # The heads' optimizer moments are sharded like the heads.
  moments = [x for x in jax.tree.leaves(state.opt_state) if getattr(x, "shape", None) == kernel.shape]
  assert moments and all(m.sharding.shard_shape(m.shape)[-1] == 1024 // model_axis for m in moments)


@needs_eight
def test_mesh_errors_name_the_key(tiny_config):
  config = _tiny(tiny_config)
  config.mesh.data, config.mesh.model = 3, 2
  with pytest.raises(ValueError, match=r"config\.mesh"):
    experiment_lib.build(config, abstract=True)
  config.mesh.data, config.mesh.model = -1, 1
  config.batch_size = 12
  with pytest.raises(ValueError, match=r"config\.batch_size=12"):
    experiment_lib.build(config, abstract=True)


@needs_eight
def test_checkpoint_restores_onto_a_different_mesh(tiny_config, tmp_path):
  config = _tiny(tiny_config)
  config.model.width = 16
  config.rlp.num_labels = 64
  config.mesh.data, config.mesh.model = 8, 1
  _, saved = experiment_lib.build(config)
  ckpt = checkpointing.Checkpoints(str(tmp_path), config)
  ckpt.save_resume(0, saved, wait=True)
  config.mesh.data, config.mesh.model = 2, 4
  experiment, target = experiment_lib.build(config, abstract=True)  # shapes and shardings only
  step, restored = checkpointing.Checkpoints(str(tmp_path), config).restore_latest(target)
  assert step == 0
  same = jax.tree.map(np.array_equal, jax.device_get(restored.params), jax.device_get(saved.params))
  assert all(jax.tree.leaves(same))
  kernel = restored.params["rlp"]["layers"]["pre_logits"]["kernel"]
  assert kernel.sharding.spec[-1] == "model" and kernel.sharding.mesh.shape == experiment.mesh.shape
  assert {s.data.shape[-1] for s in kernel.addressable_shards} == {16}
