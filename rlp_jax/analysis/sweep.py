r"""Sweeps: a grid of runs of one experiment, run one after another here or emitted as launch commands.

  python -m rlp_jax.sweep --config=configs/digits.py --workdir=ROOT \
      --sweep='rlp.reg_lambda=0,1e-2,1,1e2;model.width=8,16' [--config.KEY=VALUE ...] \
      [--emit=local|tpu|slurm] [--launcher_args='--name rlp-v4 --zone us-central2-b'] [--summarize]

**The sweep spec.** ``;`` separates axes, each ``KEY=V1,V2,...``; the runs are the Cartesian product of the
axes, in the order written (the last axis varies fastest). Keys are config keys as on the command line;
values are parsed to the type of the key's default (``0`` for a float key is ``0.0``; ``true``/``false`` for
booleans). A value that itself contains a comma (e.g. ``rlp.layers=block_1,pre_logits``) needs the Python
form: a config file may define ``get_sweep(arg)`` next to ``get_config(arg)``, returning the spec string, a
``{key: [values]}`` dict (a grid) or a list of ``{key: value}`` dicts (exactly those runs); ``--sweep``
overrides it.

**Runs.** Each run has its own workdir ``ROOT/<key>=<value>,<key>=<value>`` (e.g.
``ROOT/rlp.reg_lambda=0.01,model.width=8``) and the config ``--config`` + ``--config.*`` + its point.
Without ``--emit`` they run here one after another (``loop.train_and_evaluate``). A finished run (its
``summary.json`` written and its final epoch in ``metrics.jsonl``) is not redone; an unfinished one
resumes from its last checkpoint; a run whose loss became NaN is recorded (``ROOT/<run>/diverged.txt``) and
skipped on later invocations (delete that file to retry). ``--emit=tpu|slurm`` prints one
``launch/tpu.sh run ...`` / ``launch/slurm.sh ...`` line per unfinished run instead (``--emit=local`` prints
the ``python -m rlp_jax.main`` lines), to paste or pipe into a shell; ``--launcher_args`` go to every
launcher line.

**Summary.** ``ROOT/summary.csv`` (every final metric) and ``ROOT/summary.md`` (the main columns): one row
per run with its swept values, status (done, diverged, incomplete: started, not finished, missing: not
started) and final metrics. Written after the local runs, and by ``--summarize`` alone (e.g. after the
emitted runs finished elsewhere).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import math
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from rlp_jax.infra import config_args, rundir
from rlp_jax.infra.errors import UserError

MAIN = "python -m rlp_jax.main"
LAUNCHERS = {"tpu": "launch/tpu.sh run", "slurm": "launch/slurm.sh"}
DIVERGED_FILE = "diverged.txt"


# ----------------------------------------------------------------------------------------------------
# The spec
# ----------------------------------------------------------------------------------------------------


def parse_value(config: ml_collections.ConfigDict, key: str, text: str):
  """A value from the command line, typed like the key's current value."""
  current = config_args.lookup(config, key, "sweep")
  text = text.strip()
  try:
    if isinstance(current, bool):
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError
      return text.lower() in ("true", "1")
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
  except ValueError:
    raise UserError(
      f"sweep key {key!r}: {text!r} is not a {type(current).__name__} (the type of its default {current!r})."
    ) from None
  return text


def parse_spec(spec: str, config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """``'a=1,2;b=x,y'`` -> the grid ``[{a: 1, b: x}, {a: 1, b: y}, {a: 2, b: x}, {a: 2, b: y}]``."""
  axes = []
  for part in spec.split(";"):
    part = part.strip()
    if not part:
      continue
    if "=" not in part:
      raise UserError(f"sweep axis {part!r}: expected KEY=V1,V2,... (axes separated by ';').")
    key, values = part.split("=", 1)
    key = key.strip().removeprefix("--config.").removeprefix("config.")
    vals = [parse_value(config, key, v) for v in values.split(",") if v.strip()]
    if not vals:
      raise UserError(f"sweep axis {part!r} has no values.")
    axes.append((key, vals))
  return grid(dict(axes)) if axes else []


def grid(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  keys = list(axes)
  return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def points_from(sweep, config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """A spec string, a ``{key: [values]}`` grid, or a list of ``{key: value}`` points -> the points."""
  if isinstance(sweep, str):
    points = parse_spec(sweep, config)
  elif isinstance(sweep, Mapping):
    points = grid(sweep)
  else:
    points = [dict(p) for p in sweep]
  for p in points:
    for k in p:
      config_args.lookup(config, k, "sweep")
  names = [run_name(p) for p in points]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise UserError(f"the sweep names some runs twice: {dupes}.")
  if not points:
    raise UserError("the sweep is empty: pass --sweep='KEY=V1,V2;...' or define get_sweep() in the config.")
  return points


def format_value(v) -> str:
  if isinstance(v, bool):
    return str(v).lower()
  if isinstance(v, float):
    return "0" if v == 0 else format(v, "g")
  return str(v)


def run_name(point: Mapping[str, Any]) -> str:
  """``{'rlp.reg_lambda': 0.01, 'model.width': 8}`` -> ``'rlp.reg_lambda=0.01,model.width=8'``."""
  parts = []
  for k, v in point.items():
    text = format_value(v).replace("/", "_").replace(",", "+").replace(" ", "")
    parts.append(f"{k}={text}")
  return ",".join(parts) or "base"


def apply_point(config: ml_collections.ConfigDict, point: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of ``config`` with the point's values set (type-checked by the locked ConfigDict)."""
  out = config.copy_and_resolve_references()
  for k, v in point.items():
    *parents, leaf = k.split(".")
    node = out
    for p in parents:
      node = node[p]
    node[leaf] = v
  return out


def sweep_from_config_file(config_arg: str):
  """The ``get_sweep(arg)`` of a config file ``path[:arg]``, or None when it defines none."""
  path, _, arg = config_arg.partition(":")
  fn = getattr(config_args.load_module(path), "get_sweep", None)
  if fn is None:
    return None
  return fn(arg) if arg else fn()


# ----------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
  name: str
  point: dict[str, Any]
  workdir: str
  config: ml_collections.ConfigDict


def make_runs(config, root: str, points) -> list[Run]:
  return [Run(run_name(p), dict(p), os.path.join(root, run_name(p)), apply_point(config, p)) for p in points]


def final_record(run: Run) -> dict | None:
  """The metrics.jsonl record of the run's final epoch, or None."""
  records = rundir.read_jsonl(os.path.join(run.workdir, rundir.METRICS_FILE))
  return rundir.final_record(records, run.config.num_epochs)


def status(run: Run) -> str:
  if os.path.exists(os.path.join(run.workdir, DIVERGED_FILE)):
    return "diverged"
  if os.path.exists(os.path.join(run.workdir, rundir.SUMMARY_FILE)) and final_record(run) is not None:
    return "done"
  if os.path.exists(os.path.join(run.workdir, rundir.CONFIG_FILE)):
    return "incomplete"  # started (or interrupted): re-running resumes it
  return "missing"


def run_local(runs: Sequence[Run], log=print) -> dict[str, str]:
  """Trains every unfinished run, one after another; returns ``{name: what happened}``."""
  from rlp_jax.training import loop  # lazily: emitting commands needs no JAX

  out = {}
  for i, run in enumerate(runs):
    st = status(run)
    if st in ("done", "diverged"):
      log(f"[{i + 1}/{len(runs)}] {run.name}: {st}, skipped")
      out[run.name] = f"skipped ({st})"
      continue
    log(
      f"[{i + 1}/{len(runs)}] {run.name}: {'resuming' if st == 'incomplete' else 'training'} in {run.workdir}"
    )
    try:
      result = loop.train_and_evaluate(run.config, run.workdir)
    except loop.NonFiniteLossError as e:
      rundir.atomic_write(os.path.join(run.workdir, DIVERGED_FILE), str(e) + "\n")
      log(f"  diverged: {e}")
      out[run.name] = "diverged"
      continue
    log(result["table"])
    out[run.name] = "trained"
  return out


def command_lines(
  runs: Sequence[Run], emit: str, config_arg: str, base_overrides: Sequence[str], launcher_args: str = ""
) -> list[str]:
  """One shell line per unfinished run: for ``launch/`` (``tpu``, ``slurm``) or this machine (``local``)."""
  lines = []
  for run in runs:
    if status(run) in ("done", "diverged"):
      continue
    overrides = list(base_overrides) + [f"--config.{k}={format_value(v)}" for k, v in run.point.items()]
    if emit == "local":
      words = [*MAIN.split(), f"--config={config_arg}", f"--workdir={run.workdir}", *overrides]
    elif emit in LAUNCHERS:
      words = [
        *LAUNCHERS[emit].split(),
        "--config",
        config_arg,
        "--workdir",
        run.workdir,
        *shlex.split(launcher_args),
        "--",
        *overrides,
      ]
    else:
      raise UserError(f"--emit={emit!r}: use local, tpu or slurm.")
    lines.append(shlex.join(words))
  return lines


# ----------------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------------

_MAIN_COLUMNS = ("epoch", "train/accuracy", "test/accuracy", "gap")


def summary_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
  rows = []
  for run in runs:
    row: dict[str, Any] = {"run": run.name, **{k: format_value(v) for k, v in run.point.items()}}
    row["status"] = status(run)
    final = final_record(run) or {}
    if final:
      row["epoch"] = final.get("epoch")
      if "train/accuracy" in final and "test/accuracy" in final:
        row["gap"] = final["train/accuracy"] - final["test/accuracy"]
      row.update({k: v for k, v in final.items() if k not in ("epoch",)})
    rows.append(row)
  return rows


def _columns(rows: Sequence[Mapping], keys: Sequence[str]) -> list[str]:
  head = ["run", *keys, "status", *_MAIN_COLUMNS]
  rest = sorted({k for r in rows for k in r} - set(head))
  rlp = [k for k in rest if k.startswith("rlp/") and "/head_" not in k]
  return head + rlp + [k for k in rest if k not in rlp]


def _cell(v) -> str:
  if v is None:
    return ""
  if isinstance(v, float):
    if math.isnan(v):
      return "nan"
    return format(v, "g") if v.is_integer() else f"{v:.4f}"
  return str(v)


def write_summary(root: str, runs: Sequence[Run]) -> list[dict[str, Any]]:
  """``ROOT/summary.csv`` (all final metrics) and ``ROOT/summary.md`` (the main ones); returns the rows."""
  rows = summary_rows(runs)
  keys = list(dict.fromkeys(k for run in runs for k in run.point))
  columns = _columns(rows, keys)
  os.makedirs(root, exist_ok=True)
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  rundir.atomic_write(os.path.join(root, "summary.csv"), buf.getvalue())

  md_cols = [*keys, "status", *_MAIN_COLUMNS]
  md_cols += [c for c in columns if c.startswith("rlp/") and c.endswith(("/accuracy", "/chance"))]
  md_cols = [c for c in md_cols if any(c in r for r in rows)]
  lines = ["| " + " | ".join(md_cols) + " |", "|" + "---|" * len(md_cols)]
  lines += ["| " + " | ".join(_cell(r.get(c)) for c in md_cols) + " |" for r in rows]
  rundir.atomic_write(os.path.join(root, "summary.md"), f"# Sweep {root}\n\n" + "\n".join(lines) + "\n")
  return rows
