"""Train state, jitted train/eval steps, and the loop: ``train_and_evaluate(config, workdir)``.

Data flow of one step::

  batch (image, label, index, rlp_labels) --device_put(data sharding)--> train_step(state, batch)
    forward(model, train=True) -> class logits + sown intermediates
    rlp.routed_losses(...)    -> L_class + L_rnd + λ·L_reg + L_probe  (all gradient routing lives there)
    one optax.multi_transform: the backbone+class head, the RLP heads and the probes each have their own
    optimizer, so clipping/decay/schedules of one group never touch another.

The parameters are pure dicts ``{'model', 'rlp', 'probes'}`` (plus the model's BatchNorm statistics), so
checkpoints are plain nested dicts that any tool can read.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rlp_jax import (
  checkpointing,
  configuration,
  input_pipeline,
  models,
  offline,
  optimizers,
  rlp,
  sharding,
  summary,
)

# PRNG streams derived from config.seed (the heads' streams are in rlp.py). The model's stream never
# depends on whether RLP heads or probes exist: that is what makes λ = 0 bit-identical to no heads.
_MODEL_STREAM, _DROPOUT_STREAM = 0, 3


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
  rlp_layers: tuple[str, ...]
  reg_layers: tuple[str, ...]
  probe_layers: tuple[str, ...]
  num_labels: int  # n
  tx: optax.GradientTransformation
  steps_per_epoch: int
  total_steps: int
  mesh: Mesh
  state_sharding: Any = None  # NamedShardings of every TrainState leaf
  label_multiple: int = 1  # the heads' label axis is padded to a multiple of this (rlp.build_heads)

  @property
  def data_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P("data"))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())


# ----------------------------------------------------------------------------------------------------
# Model application
# ----------------------------------------------------------------------------------------------------


def _check_divisible(value: int, key: str, mesh: Mesh) -> None:
  n = mesh.shape["data"]
  if value % n:
    raise ValueError(
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
  info = info or input_pipeline.get_info(config)
  mesh = sharding.make_mesh(config.mesh, devices)
  _check_divisible(config.batch_size, "batch_size", mesh)
  _check_divisible(config.eval.batch_size, "eval.batch_size", mesh)
  spe = input_pipeline.steps_per_epoch(config, info)
  total = spe * config.num_epochs

  def new_model():
    key = jax.random.fold_in(jax.random.key(config.seed), _MODEL_STREAM)
    return models.create_model(config.model, info.num_classes, info.input_shape, rngs=nnx.Rngs(key))

  model_def, abs_params, abs_stats = nnx.split(nnx.eval_shape(new_model), nnx.Param, nnx.BatchStat)
  abs_params, abs_stats = abs_params.to_pure_dict(), abs_stats.to_pure_dict()

  # Shapes of every sown intermediate, without running or compiling anything.
  x = jax.ShapeDtypeStruct((2,) + tuple(info.input_shape), jnp.float32)
  sown = jax.eval_shape(
    lambda p, s, x: models.apply(model_def, p, s, x, train=False)[1], abs_params, abs_stats, x
  )
  sown_layers = tuple(sown)
  dims = {
    k: int(np.prod(v.shape[1:])) if config.rlp.pool == "flatten" and v.ndim > 2 else v.shape[-1]
    for k, v in sown.items()
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
    raise ValueError(
      "config.rlp.layers is empty but config.rlp.num_heads > 0; name a layer "
      f"(one of {list(sown_layers)}) or set config.rlp.num_heads=0."
    )
  probe_layers = tuple(configuration.parse_layers(config.probes.layers, list(sown_layers), "probes.layers"))
  n = input_pipeline.num_labels(config, info)
  # A label axis that the model axis times the label chunk does not divide is padded with masked labels
  # (each device's shard must split into whole chunks).
  label_multiple = mesh.shape["model"] * max(1, config.rlp.label_chunk)

  def new_heads():
    return rlp.build_heads(config, dims, rlp_layers, n, label_multiple=label_multiple)

  def new_probes():
    return rlp.build_probes(config, dims, probe_layers, info.num_classes)

  heads_def = nnx.graphdef(nnx.eval_shape(new_heads)) if rlp_layers else None
  probes_def = nnx.graphdef(nnx.eval_shape(new_probes)) if probe_layers else None
  tx = optimizers.grouped(
    {"model": config.optimizer, "rlp": config.rlp.optimizer, "probes": config.probes.optimizer},
    steps_per_epoch=spe,
    total_steps=total,
  )
  exp = Experiment(
    config=config,
    info=info,
    model_def=model_def,
    heads_def=heads_def,
    probes_def=probes_def,
    sown_layers=sown_layers,
    feature_dims=dims,
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
      loss_sums=_zero_sums(exp),
    )

  shapes = jax.eval_shape(init_state)
  shardings = sharding.state_shardings(shapes, mesh, fsdp=config.mesh.fsdp)
  exp = dataclasses.replace(exp, state_sharding=shardings)
  if abstract:
    return exp, jax.tree.map(
      lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), shapes, shardings
    )
  return exp, jax.jit(init_state, out_shardings=shardings)()


def _loss_names(exp: Experiment) -> list[str]:
  names = ["loss/class", "loss/total"]
  if exp.rlp_layers:
    names += ["loss/rnd", "loss/reg"]
  if exp.probe_layers:
    names.append("loss/probe")
  return names


def _zero_sums(exp: Experiment) -> dict[str, jax.Array]:
  return {k: jnp.zeros((), jnp.float32) for k in _loss_names(exp)}


# ----------------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------------


def _losses(exp: Experiment, params, batch_stats, batch, *, train: bool, dropout_key=None):
  cfg = exp.config
  logits, features, new_stats = models.apply(
    exp.model_def, params["model"], batch_stats, batch["image"], train=train, dropout_key=dropout_key
  )
  total, parts = rlp.routed_losses(
    class_logits=logits,
    features=features,
    labels=batch["label"],
    rlp_labels=batch.get("rlp_labels"),
    # Test batches carry no random labels (they are defined on training examples only).
    heads=nnx.merge(exp.heads_def, params["rlp"]) if exp.heads_def and "rlp_labels" in batch else None,
    probes=nnx.merge(exp.probes_def, params["probes"]) if exp.probes_def else None,
    reg_layers=exp.reg_layers,
    reg_lambda=cfg.rlp.reg_lambda if train else 0.0,
    label_smoothing=cfg.label_smoothing,
    pool=cfg.rlp.pool,
    mesh=exp.mesh,
    label_chunk=cfg.rlp.label_chunk,
  )
  return total, (parts, logits, new_stats)


def make_train_step(exp: Experiment):
  dropout_base = jax.random.fold_in(jax.random.key(exp.config.seed), _DROPOUT_STREAM)

  def train_step(state: TrainState, batch) -> TrainState:
    # The dropout key is a function of (seed, step) only: resumption replays the same masks.
    key = jax.random.fold_in(dropout_base, state.step)
    grad_fn = jax.value_and_grad(
      lambda p: _losses(exp, p, state.batch_stats, batch, train=True, dropout_key=key), has_aux=True
    )
    (_, (parts, _, new_stats)), grads = grad_fn(state.params)
    updates, opt_state = exp.tx.update(grads, state.opt_state, state.params)
    sums = {k: state.loss_sums[k] + parts[k] for k in state.loss_sums}
    return state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=new_stats,
      opt_state=opt_state,
      loss_sums=sums,
    )

  batch_sharding = exp.data_sharding
  return jax.jit(
    train_step,
    in_shardings=(exp.state_sharding, batch_sharding),
    out_shardings=exp.state_sharding,
    donate_argnums=0,
  )


def make_eval_step(exp: Experiment):
  """Sums of correct predictions over the real (mask) examples of one batch, in eval mode."""

  def eval_step(params, batch_stats, batch):
    _, (parts, logits, _) = _losses(exp, params, batch_stats, batch, train=False)
    mask = batch["mask"]
    out = {
      "count": mask.sum(),
      "class_correct": ((jnp.argmax(logits, -1) == batch["label"]) & mask).sum(),
      "class_loss": (rlp.cross_entropy(logits, batch["label"]) * mask).sum(),
    }
    for name, correct in parts.get("rnd_correct", {}).items():
      out[f"rlp/{name}"] = (correct & mask[:, None]).sum(0)
    for name, correct in parts.get("probe_correct", {}).items():
      out[f"probe/{name}"] = (correct & mask).sum()
    return out

  return jax.jit(eval_step)


def _device_batch(exp: Experiment, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
  keep = ("image", "label", "rlp_labels", "mask")
  return {
    k: jax.make_array_from_process_local_data(exp.data_sharding, v) for k, v in batch.items() if k in keep
  }


def evaluate(exp: Experiment, eval_step, state: TrainState, epoch: int) -> dict[str, float]:
  """Class accuracy on the fixed train subset and on test; random-label and probe accuracy per layer."""
  out: dict[str, float] = {}
  for split, prefix in (("train_eval", "train"), ("test", "test")):
    sums = None
    limit = exp.config.eval.train_examples
    for batch in input_pipeline.eval_batches(exp.config, exp.info, split, epoch, limit=limit):
      if split == "test":
        batch.pop("rlp_labels", None)
      b = eval_step(state.params, state.batch_stats, _device_batch(exp, batch))
      sums = b if sums is None else jax.tree.map(jnp.add, sums, b)
    sums = jax.tree.map(np.asarray, sums)
    count = max(float(sums["count"]), 1.0)
    out[f"{prefix}/accuracy"] = float(sums["class_correct"]) / count
    out[f"{prefix}/loss"] = float(sums["class_loss"]) / count
    for name in exp.probe_layers:
      out[f"probe/{name}/{prefix}_accuracy"] = float(sums[f"probe/{name}"]) / count
    if split == "train_eval":
      per_head = {n: sums[f"rlp/{n}"] / count for n in exp.rlp_layers}
      out.update(rlp.accuracy_metrics(per_head, exp.num_labels))
  return out


# ----------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each step, so it can checkpoint and exit cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() > 1:
      # jax.distributed.initialize installed the handler that reports SIGTERM to the coordination service
      # (which feeds the preemption sync point below); a Python handler would replace it.
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread (e.g. some test runners): no handler, no harm
      self._previous = None
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self.requested = True

  def stop_now(self, step: int) -> bool:
    """Whether to checkpoint and exit after ``step``. On several hosts all must stop at the same step (a
    host leaving alone would deadlock the others' collectives), so JAX's preemption sync point — fed by
    the coordination service, which sees SIGTERM on any host — decides there."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class NonFiniteLossError(FloatingPointError):
  pass


def _check_finite(sums: Mapping[str, jax.Array], step: int, last_saved: int | None, workdir: str) -> None:
  total = float(sums["loss/total"])
  if not np.isfinite(total):
    raise NonFiniteLossError(
      f"The training loss became {total} by step {step}. Training stopped; the last good checkpoint "
      f"(step {last_saved}) in {workdir}/checkpoints is intact and nothing after it was saved. Lower "
      "config.optimizer.learning_rate, set config.optimizer.grad_clip_norm, or lower config.rlp.reg_lambda."
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in ``workdir``; returns the final metrics and the summary table rows."""
  configuration.validate(config)
  checkpointing.check_same_experiment(config, workdir)
  exp, state = build(config)
  checkpointing.write_config(config, workdir)
  mngr = checkpointing.manager(workdir)
  # Imported here, not at the top: clu's writers pull in TensorFlow, which the train *step* (and so the
  # benchmark on an accelerator machine that has only JAX) does not need.
  from clu import periodic_actions

  from rlp_jax import metric_logging

  writer, progress_writer, jsonl = metric_logging.create_writers(workdir)

  latest = mngr.latest_step()
  if latest is None:
    checkpointing.save(mngr, 0, state)  # initialization: the offline control of Fig. 2B
    latest = 0
  else:
    state = checkpointing.restore(mngr, latest, state)
    logging.info("Resumed from step %d of %d.", latest, exp.total_steps)
  if jsonl is not None:
    jsonl.truncate_after(latest)

  train_step, eval_step = make_train_step(exp), make_eval_step(exp)
  spe = exp.steps_per_epoch
  step = int(state.step)
  progress = periodic_actions.ReportProgress(
    num_train_steps=exp.total_steps, writer=progress_writer, every_steps=config.log_every_steps
  )
  last_eval: dict[str, float] = {}
  with _Preemption() as preemption:
    for epoch in range(step // spe, config.num_epochs):
      if step == epoch * spe:
        state = state.replace(loss_sums=jax.device_put(_zero_sums(exp), exp.state_sharding.loss_sums))
      for batch in input_pipeline.train_batches(config, exp.info, epoch, skip=step - epoch * spe):
        state = train_step(state, _device_batch(exp, batch))
        step += 1
        progress(step, time.time())
        if step % config.log_every_steps == 0:
          _check_finite(state.loss_sums, step, latest, workdir)
        if preemption.stop_now(step):
          _check_finite(state.loss_sums, step, latest, workdir)
          checkpointing.save(mngr, step, state, force=True)
          writer.flush()
          raise SystemExit(f"Preempted: checkpoint saved at step {step}; re-run the same command to resume.")
      _check_finite(state.loss_sums, step, latest, workdir)
      done = epoch + 1
      if done % config.eval.every_epochs == 0 or done == config.num_epochs:
        metrics = {
          "epoch": done,
          **{k: float(v) / spe for k, v in state.loss_sums.items()},
          **evaluate(exp, eval_step, state, epoch),
        }
        writer.write_scalars(step, metrics)
        writer.flush()
        last_eval = metrics
        logging.info("epoch %d: %s", done, _short(metrics))
      if done % config.checkpoint_every_epochs == 0 or done == config.num_epochs:
        checkpointing.save(mngr, step, state)
        latest = step
  if not last_eval:  # the run had already finished: report its final evaluation again
    last_eval = {"epoch": config.num_epochs, **evaluate(exp, eval_step, state, config.num_epochs - 1)}
  writer.close()

  offline_at_init = {}
  if config.offline.at_init and exp.rlp_layers:
    init = checkpointing.restore(mngr, 0, state)
    offline_at_init = offline.offline_accuracy(exp, init.params["model"], init.batch_stats)
  head_rows = summary.rows(last_eval, offline_at_init, exp.num_labels, exp.rlp_layers)
  if jax.process_index() == 0:
    summary.write(workdir, last_eval, head_rows)
  return {
    "metrics": last_eval,
    "offline_at_init": offline_at_init,
    "rlp_heads": head_rows,
    "table": summary.format_table(last_eval, head_rows),
    "experiment": exp,
    "state": state,
  }


def _short(metrics: Mapping[str, float]) -> str:
  keys = [
    k
    for k in metrics
    if k in ("train/accuracy", "test/accuracy", "loss/total")
    or (k.startswith("rlp/") and k.endswith("/accuracy") and "/head_" not in k)
  ]
  return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys)
