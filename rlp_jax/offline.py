"""Offline RLP heads (Fig. 2B): a fresh head trained on the *frozen* features of a saved network.

The paper's control for "does the online head measure the network or merely itself?": freeze the network
at a checkpoint (at initialization, or after any epoch), train an RLP head from scratch with the same
initialization, the same random labels and the same budget for every checkpoint, and report its
random-label accuracy. The network's parameters are only read.

``offline_accuracy`` is the reusable routine: the demo runs it on checkpoint 0, and the analysis tools
run it over every saved checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from rlp_jax import input_pipeline, models, optimizers, rlp


def extract_features(exp, model_params, batch_stats, layers, *, limit: int = -1, epoch: int = 0):
  """Pooled eval-mode features of the selected training examples, in order of their global index.

  Returns ``({layer: (M, D) float32}, rlp_labels (M, num_heads))`` as NumPy arrays on host. With several
  hosts each reads its own slice of the examples, the features are computed over the mesh like an eval
  step, and every host receives all of them: all hosts then fit the same offline heads on all M examples.
  (A host fitting only its own slice would memorize fewer labels, so more easily, and each host would
  report a different number.) Ordering by index makes the result independent of the number of hosts.
  """

  @jax.jit
  def features_of(params, stats, image):
    _, feats, _ = models.apply(exp.model_def, params, stats, image, train=False)
    return {k: rlp.pool_features(feats[k], exp.config.rlp.pool).astype(jnp.float32) for k in layers}

  rows = []
  for batch in input_pipeline.eval_batches(exp.config, exp.info, "train_eval", epoch, limit=limit):
    image = jax.make_array_from_process_local_data(exp.data_sharding, batch["image"])
    feats = features_of(model_params, batch_stats, image)
    local = {k: batch[k] for k in ("index", "mask", "rlp_labels")}
    if jax.process_count() > 1:
      # This host's rows of the features, then every host's rows of everything, aligned row for row.
      feats = multihost_utils.global_array_to_host_local_array(feats, exp.mesh, P("data"))
      local = multihost_utils.process_allgather({**local, "feats": feats}, tiled=True)
    else:
      local = {**local, "feats": jax.device_get(feats)}
    mask = local["mask"]
    rows.append({"index": local["index"][mask], "rlp_labels": local["rlp_labels"][mask]})
    rows[-1].update({f"feats/{k}": v[mask] for k, v in local["feats"].items()})
  out = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
  order = np.argsort(out["index"], kind="stable")
  return {k: out[f"feats/{k}"][order] for k in layers}, out["rlp_labels"][order]


def fit_heads(
  exp, features: Mapping[str, np.ndarray], rlp_labels: np.ndarray, *, num_epochs: int, batch_size: int
) -> dict[str, np.ndarray]:
  """Trains freshly initialized heads on fixed features; returns random-label accuracy per layer, (H,).

  The heads are built by ``rlp.build_heads`` — the same initialization as the online heads — and use the
  online heads' optimizer settings, for ``num_epochs`` over the examples in a seeded order.
  """
  layers = list(features)
  heads = rlp.build_heads(
    exp.config, exp.feature_dims, layers, exp.num_labels, label_multiple=exp.label_multiple
  )
  graphdef, params = nnx.split(heads)
  params = params.to_pure_dict()
  m = len(rlp_labels)
  batch_size = min(batch_size, m)
  spe = m // batch_size
  tx = optimizers.make(exp.config.rlp.optimizer, steps_per_epoch=spe, total_steps=spe * num_epochs)
  opt_state = tx.init(params)

  chunk = exp.config.rlp.label_chunk

  def stats(p, feats, y):
    # The online heads' loss code (head_loss.py): exact, and chunked over labels like them.
    heads = nnx.merge(graphdef, p).layers
    return {k: rlp.head_stats(heads[k], heads[k].standardize(f), y, chunk=chunk) for k, f in feats.items()}

  def loss_fn(p, feats, y):
    return jnp.mean(jnp.stack([st["ce"].mean() for st in stats(p, feats, y).values()]))

  @jax.jit
  def epoch_fn(p, opt_state, feats, y, order):
    # One jitted epoch (lax.scan over minibatches): offline heads are trained for every checkpoint,
    # so per-step dispatch would dominate on small feature sets.
    def step(carry, idx):
      p, s = carry
      grads = jax.grad(loss_fn)(p, {k: v[idx] for k, v in feats.items()}, y[idx])
      updates, s = tx.update(grads, s, p)
      return (optax.apply_updates(p, updates), s), None

    (p, opt_state), _ = jax.lax.scan(step, (p, opt_state), order)
    return p, opt_state

  feats = {k: jnp.asarray(v) for k, v in features.items()}
  y = jnp.asarray(rlp_labels)
  for epoch in range(num_epochs):
    order = np.random.default_rng([exp.config.seed, epoch]).permutation(m)[: spe * batch_size]
    params, opt_state = epoch_fn(params, opt_state, feats, y, order.reshape(spe, batch_size))

  correct = jax.jit(lambda p, f, y: {k: st["correct"].mean(0) for k, st in stats(p, f, y).items()})(
    params, feats, y
  )
  return {k: np.asarray(v) for k, v in correct.items()}


def offline_accuracy(exp, model_params, batch_stats, layers=None) -> dict[str, np.ndarray]:
  """Random-label accuracy (per layer, per head) of offline heads on a frozen network."""
  layers = list(layers or exp.rlp_layers)
  cfg = exp.config.offline
  feats, y = extract_features(exp, model_params, batch_stats, layers, limit=cfg.train_examples)
  return fit_heads(exp, feats, y, num_epochs=cfg.num_epochs, batch_size=cfg.batch_size)


# ----------------------------------------------------------------------------------------------------
# Command line: offline heads on every saved checkpoint of a run (Fig. 2B)
#
#   python -m rlp_jax.offline --workdir=DIR [--config.offline.num_epochs=100 ...] [--output=offline.jsonl]
#
# Writes one JSON line per checkpoint to DIR/offline.jsonl, right after that checkpoint is done, so a
# killed run resumes after the last written step. The settings used are kept beside it
# (DIR/offline.config.json); resuming with other settings is refused instead of mixing two curves.
# ----------------------------------------------------------------------------------------------------

import json  # noqa: E402  (imports of the appended command-line section)
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from rlp_jax import configuration, metric_logging, multihost  # noqa: E402

OFFLINE_FILE = "offline.jsonl"


def _merge(base, saved: Mapping) -> None:
  for k, v in saved.items():
    if isinstance(v, Mapping) and k in base and hasattr(base[k], "items"):
      _merge(base[k], v)
    else:
      base[k] = v


def _to_dict(value):
  """ConfigDict equality also compares lock state and field types; compare the values only."""
  return value.to_dict() if hasattr(value, "to_dict") else value


def load_run_config(workdir: str):
  """The config a run was trained with (``DIR/config.json``), on top of today's defaults, locked.

  Keys added to ``configuration.base_config`` after the run was trained take their defaults, so older
  runs stay readable.
  """
  from rlp_jax import checkpointing, configuration  # here: train.py imports this module

  path = os.path.join(workdir, checkpointing.CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{path} does not exist: --workdir must be the directory of a run trained by rlp_jax.main "
      "(it writes config.json, metrics.jsonl and checkpoints/ there)."
    )
  with open(path) as f:
    saved = json.load(f)
  config = configuration.base_config()
  _merge(config, saved)
  config.lock()
  return config


def _append_jsonl(path: str, record: Mapping) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _rewrite_jsonl(path: str, records: list[dict]) -> None:
  with open(path + ".tmp", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  os.replace(path + ".tmp", path)


def offline_record(
  exp, step: int, accuracy: Mapping[str, np.ndarray], online: Mapping | None, *, steps_per_epoch: int
) -> dict:
  """One line of offline.jsonl: ``offline/<layer>/{accuracy,chance,chance_corrected,head_k/accuracy}``
  beside the online head's ``online/<layer>/{accuracy,chance_corrected}`` at the same step, if logged."""
  rec: dict = {"step": int(step), "epoch": step / steps_per_epoch}
  rec.update(rlp.accuracy_metrics(accuracy, exp.num_labels, prefix="offline"))
  for layer in accuracy:
    if online and f"rlp/{layer}/accuracy" in online:
      rec[f"online/{layer}/accuracy"] = online[f"rlp/{layer}/accuracy"]
      rec[f"online/{layer}/chance_corrected"] = online.get(f"rlp/{layer}/chance_corrected")
  return rec


def _check_same_settings(config, path: str) -> None:
  current = configuration.flatten(json.loads(config.to_json()))
  current.pop("data_dir", None)
  if os.path.exists(path):
    with open(path) as f:
      saved = configuration.flatten(json.load(f))
    saved.pop("data_dir", None)
    diffs = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if diffs:
      detail = ", ".join(f"config.{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}" for k in diffs[:8])
      raise ValueError(
        f"{path} records other settings than this offline run ({detail}); resuming would mix two curves. "
        "Pass the saved values, or --output=<another file> for a new curve."
      )
  else:
    with open(path + ".tmp", "w") as f:
      f.write(config.to_json(indent=2))
    os.replace(path + ".tmp", path)


def run_offline(
  workdir: str, config=None, *, output: str = OFFLINE_FILE, steps=None, log=print
) -> list[dict]:
  """Offline heads on every saved checkpoint of ``workdir`` (step 0 always included); returns all records.

  ``config`` defaults to the run's own; it may differ in the offline settings (``offline.*``), the head
  (``rlp.*``: layers, number of heads, hidden width, ...) or ``data_dir``, but not in the network: the
  checkpoints are restored with the run's own config. Steps already in ``DIR/<output>`` are skipped.
  """
  from rlp_jax import checkpointing, train  # not at the top: train.py imports this module

  saved = load_run_config(workdir)
  config = saved if config is None else config
  changed = [k for k in ("dataset", "model") if _to_dict(config[k]) != _to_dict(saved[k])]
  if changed:
    raise ValueError(
      f"The config overrides change the network (config.{changed[0]}); offline heads read the saved "
      "network as it is. Drop those overrides."
    )
  if not (config.rlp.num_heads and config.rlp.layers):
    raise ValueError(
      "config.rlp.num_heads is 0 or config.rlp.layers is empty: there is no head to train offline. "
      "Pass e.g. --config.rlp.num_heads=1 --config.rlp.layers=pre_logits."
    )
  path = os.path.join(workdir, output)
  is_writer = jax.process_index() == 0
  if is_writer:
    _check_same_settings(config, os.path.splitext(path)[0] + ".config.json")
  mngr = checkpointing.manager(workdir)
  all_steps = sorted(set(mngr.all_steps()))
  if 0 not in all_steps:
    raise FileNotFoundError(f"{workdir}/checkpoints has no step 0 (initialization), the offline control.")
  todo = all_steps if steps is None else [s for s in all_steps if s in set(steps) | {0}]
  records = metric_logging.read_jsonl(path)
  if is_writer and os.path.exists(path):
    _rewrite_jsonl(path, records)  # drops a line cut short by a kill
  done = {r["step"] for r in records}
  todo = [s for s in todo if s not in done]
  if not todo:
    return sorted(records, key=lambda r: r["step"])

  exp, fresh = train.build(config)
  if config.to_dict() == saved.to_dict():
    run_exp, abstract = exp, fresh
  else:  # restore with the run's own structure; read its data from where `config` says
    saved = saved.copy_and_resolve_references()
    saved.data_dir = config.data_dir
    run_exp, abstract = train.build(saved)
  online = {r["step"]: r for r in metric_logging.read_jsonl(os.path.join(workdir, "metrics.jsonl"))}
  for step in todo:
    start = time.time()
    state = checkpointing.restore(mngr, step, abstract)
    acc = offline_accuracy(exp, state.params["model"], state.batch_stats)
    rec = offline_record(exp, step, acc, online.get(step), steps_per_epoch=run_exp.steps_per_epoch)
    if is_writer:
      _append_jsonl(path, rec)
    records.append(rec)
    summary = ", ".join(
      f"{k}={v:.4f}" for k, v in rec.items() if k.endswith("/accuracy") and "head_" not in k
    )
    log(f"offline step {step} (epoch {rec['epoch']:g}): {summary}  [{time.time() - start:.1f}s]")
  return sorted(records, key=lambda r: r["step"])


def parse_cli(argv: list[str]):
  """``(workdir, config, output, steps)`` from the command line, with ``--config.*`` overrides applied to
  the run's saved config. Uses its own flag registry, so it can be called (and tested) in-process."""
  from absl import flags
  from ml_collections import config_flags

  workdir = None
  for i, arg in enumerate(argv):
    if arg.startswith("--workdir="):
      workdir = arg.split("=", 1)[1]
    elif arg == "--workdir" and i + 1 < len(argv):
      workdir = argv[i + 1]
  if not workdir:
    raise flags.Error("--workdir=DIR is required: the directory of a run trained by rlp_jax.main.")
  fv = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "Directory of a trained run.", flag_values=fv)
  flags.DEFINE_string(
    "output", OFFLINE_FILE, "File name (in the workdir) of the offline curve.", flag_values=fv
  )
  flags.DEFINE_list("steps", None, "Only these checkpoint steps (step 0 is always included).", flag_values=fv)
  config_flags.DEFINE_config_dict("config", load_run_config(workdir), flag_values=fv, sys_argv=list(argv))
  rest = fv(argv)
  if len(rest) > 1:
    raise flags.Error(f"Unexpected arguments: {rest[1:]}")
  steps = None if fv.steps is None else [int(s) for s in fv.steps]
  return fv.workdir, fv.config, fv.output, steps


def main(argv=None) -> None:
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  workdir, config, output, steps = parse_cli(list(sys.argv if argv is None else argv))
  multihost.initialize()  # on a pod: every host extracts its slice's features, all fit the same heads
  records = run_offline(workdir, config, output=output, steps=steps, log=lambda s: print(s, flush=True))
  print(f"{len(records)} checkpoints in {workdir}/{output}", flush=True)


if __name__ == "__main__":
  main()
