"""The experiment: everything static about a run, its train state, and how a batch reaches the devices.

``build(config)`` validates the config against the data and the model and creates the sharded initial
``TrainState``; the training loop, the evaluators, the offline tools and the benchmark all start here.

The parameters are pure dicts ``{'model', 'rlp', 'probes'}`` (plus the model's BatchNorm statistics), so
checkpoints are plain nested dicts that any tool can read.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rlp_jax import models
from rlp_jax.data import input_pipeline
from rlp_jax.heads import heads as heads_lib
from rlp_jax.infra import compile_cache, configuration, streams
from rlp_jax.infra import mesh as mesh_lib
from rlp_jax.infra.errors import UserError
from rlp_jax.training import optimizers, sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict[str, Any]  # {'model': θ ∪ φ, 'rlp': ψ, 'probes': probe params}
  batch_stats: dict[str, Any]  # BatchNorm running statistics of the model (may be empty)
  opt_state: Any
  loss_sums: dict[str, jax.Array]  # running sums of this epoch's losses: part of the state so a
  # resumed epoch reports exactly what an uninterrupted one would


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything static about a run: shapes, graph definitions, layer choices, optimizer, sharding."""

  config: ml_collections.ConfigDict
  info: input_pipeline.DataInfo
  model_def: Any
  heads_def: Any | None
  probes_def: Any | None
  sown_layers: tuple[str, ...]  # every intermediate the model sows, in order
  feature_dims: Mapping[str, int]  # pooled feature size per sown layer
  pool: str  # how the heads and probes pool a map: configuration.feature_pool(config)
  rlp_layers: tuple[str, ...]
  reg_layers: tuple[str, ...]
  probe_layers: tuple[str, ...]
  num_labels: int  # n
  tx: optax.GradientTransformation
  steps_per_epoch: int
  total_steps: int
  mesh: Mesh
  state_sharding: Any = None  # NamedShardings of every TrainState leaf
  label_multiple: int = 1  # the heads' label axis is padded to a multiple of this (heads.build_heads)

  @property
  def data_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P("data"))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())


def _check_divisible(value: int, key: str, mesh: Mesh) -> None:
  n = mesh.shape["data"]
  if value % n:
    raise UserError(
      f"config.{key}={value} is not divisible by the {n} devices of the mesh's data axis; "
      f"use a multiple of {n}."
    )


def build(
  config: ml_collections.ConfigDict,
  info: input_pipeline.DataInfo | None = None,
  devices=None,
  *,
  abstract: bool = False,
) -> tuple[Experiment, TrainState]:
  """Validates the config against data and model, then creates the initial, sharded state.

  Nothing large is materialized on host: shapes come from ``jax.eval_shape`` and the state is created
  by one jitted function whose outputs land directly in their shardings (a 1B-parameter head included).
  ``devices`` (default: all) is the set the mesh is laid over. ``abstract=True`` returns the state as
  ``jax.ShapeDtypeStruct``s with their shardings instead, allocating nothing (to compile and inspect a
  step that would not fit here).
  """
  configuration.validate(config)
  compile_cache.enable(config.compilation_cache_dir)  # before anything compiles
  info = info or input_pipeline.get_info(config)
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  _check_divisible(config.batch_size, "batch_size", mesh)
  _check_divisible(config.eval.batch_size, "eval.batch_size", mesh)
  spe = input_pipeline.steps_per_epoch(config, info)
  total = spe * config.num_epochs

  def new_model():
    key = streams.key(config.seed, streams.MODEL)  # never depends on the heads (infra/streams.py)
    return models.create_model(config.model, info.num_classes, info.input_shape, rngs=nnx.Rngs(key))

  model_def, abs_params, abs_stats = nnx.split(nnx.eval_shape(new_model), nnx.Param, nnx.BatchStat)
  abs_params, abs_stats = abs_params.to_pure_dict(), abs_stats.to_pure_dict()

  # Shapes of every sown intermediate, without running or compiling anything.
  x = jax.ShapeDtypeStruct((2,) + tuple(info.input_shape), jnp.float32)
  sown = jax.eval_shape(
    lambda p, s, x: models.apply(model_def, p, s, x, train=False)[1], abs_params, abs_stats, x
  )
  sown_layers = tuple(sown)
  pool = configuration.feature_pool(config)
  dims = {
    k: int(np.prod(v.shape[1:])) if pool == "flatten" and v.ndim > 2 else v.shape[-1] for k, v in sown.items()
  }

  num_heads = config.rlp.num_heads
  rlp_layers = (
    tuple(configuration.parse_layers(config.rlp.layers, list(sown_layers), "rlp.layers")) if num_heads else ()
  )
  reg_layers = (
    tuple(configuration.parse_layers(config.rlp.reg_layers, list(rlp_layers), "rlp.reg_layers"))
    if num_heads
    else ()
  )
  if num_heads and not rlp_layers:
    raise UserError(
      "config.rlp.layers is empty but config.rlp.num_heads > 0; name a layer "
      f"(one of {list(sown_layers)}) or set config.rlp.num_heads=0."
    )
  probe_layers = tuple(configuration.parse_layers(config.probes.layers, list(sown_layers), "probes.layers"))
  heads_lib.norm_layers(config, dims)  # a bad rlp.norm_layers fails here, naming what the model sows
  n = input_pipeline.num_labels(config, info)
  # A label axis that the model axis times the label chunk does not divide is padded with masked labels
  # (each device's shard must split into whole chunks).
  label_multiple = mesh.shape["model"] * max(1, config.rlp.label_chunk)

  _check_heads_fit(config, dims, rlp_layers, n, mesh)

  def new_heads():
    return heads_lib.build_heads(config, dims, rlp_layers, n, label_multiple=label_multiple)

  def new_probes():
    return heads_lib.build_probes(config, dims, probe_layers, info.num_classes)

  heads_def = nnx.graphdef(nnx.eval_shape(new_heads)) if rlp_layers else None
  probes_def = nnx.graphdef(nnx.eval_shape(new_probes)) if probe_layers else None
  tx = optimizers.grouped(
    {"model": config.optimizer, "rlp": config.rlp.optimizer, "probes": config.probes.optimizer},
    steps_per_epoch=spe,
    total_steps=total,
  )
  experiment = Experiment(
    config=config,
    info=info,
    model_def=model_def,
    heads_def=heads_def,
    probes_def=probes_def,
    sown_layers=sown_layers,
    feature_dims=dims,
    pool=pool,
    rlp_layers=rlp_layers,
    reg_layers=reg_layers,
    probe_layers=probe_layers,
    num_labels=n,
    tx=tx,
    steps_per_epoch=spe,
    total_steps=total,
    mesh=mesh,
    label_multiple=label_multiple,
  )

  def init_state() -> TrainState:
    _, params, stats = nnx.split(new_model(), nnx.Param, nnx.BatchStat)
    pure = lambda module: nnx.state(module).to_pure_dict() if module is not None else {}
    all_params = {"model": params.to_pure_dict(), "rlp": pure(new_heads()), "probes": pure(new_probes())}
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=all_params,
      batch_stats=stats.to_pure_dict(),
      opt_state=tx.init(all_params),
      loss_sums=zero_sums(experiment),
    )

  shapes = jax.eval_shape(init_state)
  shardings = sharding.state_shardings(shapes, mesh, fsdp=config.mesh.fsdp)
  experiment = dataclasses.replace(experiment, state_sharding=shardings)
  if abstract:
    return experiment, jax.tree.map(
      lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), shapes, shardings
    )
  return experiment, jax.jit(init_state, out_shardings=shardings)()


def _check_heads_fit(config, dims, layers, num_labels: int, mesh) -> None:
  """Refuses heads whose parameters and Adam moments cannot fit one device's memory.

  Parameters and moments are 3 float32 copies; on a CPU the memory is the host's. Refused before anything
  is allocated: ``rlp.num_heads=1e9`` would otherwise hang allocating. Per device, the label axis is split
  over the mesh's ``model`` axis.
  """
  rlp = config.rlp
  per_head = sum(
    (dims[k] + 1) * (rlp.hidden_dim or 0) + ((rlp.hidden_dim or dims[k]) + 1) * num_labels for k in layers
  )
  need = 3 * 4 * rlp.num_heads * per_head / mesh.shape["model"]
  try:  # this process's own device: another host's cannot be asked
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # noqa: BLE001 - a backend without memory statistics: use the host's memory
    stats = None
  have = (stats or {}).get("bytes_limit") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  if need > have:
    raise UserError(
      f"config.rlp.num_heads={rlp.num_heads:,}: the heads' parameters and optimizer state need "
      f"{need / 2**30:,.1f} GiB per device, more than its {have / 2**30:,.1f} GiB; use fewer heads, layers "
      "or "
      "labels (config.rlp.num_labels), or split the labels over more devices (config.mesh.model)."
    )


def loss_names(experiment: Experiment) -> list[str]:
  names = ["loss/class", "loss/total"]
  if experiment.rlp_layers:
    names += ["loss/rnd", "loss/reg"]
  if experiment.probe_layers:
    names.append("loss/probe")
  return names


def zero_sums(experiment: Experiment) -> dict[str, jax.Array]:
  return {k: jnp.zeros((), jnp.float32) for k in loss_names(experiment)}


def device_batch(experiment: Experiment, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
  """This host's part of a batch -> global arrays in the data sharding (what a step reads of it)."""
  keep = ("image", "label", "rlp_labels", "mask")
  return {
    k: jax.make_array_from_process_local_data(experiment.data_sharding, v)
    for k, v in batch.items()
    if k in keep
  }


def device_batches(
  experiment: Experiment, batches: Iterable[Mapping[str, np.ndarray]], size: int = 2
) -> Iterator[dict[str, jax.Array]]:
  """``device_batch`` of each batch, ``size`` batches ahead (device prefetch).

  JAX dispatches a step and returns at once; by the time the loop asks for batch i + 1 it was already read,
  labelled and on its way to the devices, so neither the input pipeline nor the host-to-device copy waits
  for the step. ``size=0`` transfers each batch only when it is asked for.
  """
  it = iter(batches)
  ahead = collections.deque(device_batch(experiment, b) for b in itertools.islice(it, size))
  for batch in it:
    ahead.append(device_batch(experiment, batch))
    yield ahead.popleft()
  yield from ahead
