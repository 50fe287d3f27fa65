r"""The report of one or more runs: every figure their logs allow and one Markdown page embedding them.

  python -m rlp_jax.report WORKDIR [WORKDIR ...] [--out=DIR]

A WORKDIR is a run directory (it holds ``metrics.jsonl``) or a sweep root (its subdirectories are the runs);
what is read: analysis/run_logs.py; the figures: analysis/figures.py. Writes PNGs and ``report.md`` to
``--out`` (default: ``WORKDIR/report`` for one run, ``<common parent>/report`` for several). The page holds
a table of final metrics (the record of each run's last epoch; blank while a run is unfinished), the
figures, and a run's memorization summary where ``memorization.json`` exists.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from rlp_jax.analysis import figures
from rlp_jax.analysis.run_logs import (
  LAMBDA,
  SHORT_NAMES,
  RunLogs,
  differing_keys,
  find_runs,
  fmt_value,
  run_label,
)
from rlp_jax.infra import rundir
from rlp_jax.infra.errors import UserError


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name)


def make_report(paths: Sequence[str], out: str | None = None, *, per_run: bool = True) -> dict:
  """Writes every figure the logs allow and ``report.md``; returns ``{figure file: plotted data}``."""
  runs = find_runs(paths)
  if not runs:
    raise UserError("no runs found")
  if out is None:
    base = (
      runs[0].workdir if len(runs) == 1 else os.path.commonpath([os.path.abspath(r.workdir) for r in runs])
    )
    out = os.path.join(base, "report")
  os.makedirs(out, exist_ok=True)
  keys = differing_keys(runs)
  drawn: dict[str, dict] = {}
  md = [f"# RLP report: {', '.join(paths)}", ""]

  def add(filename, title, draw, ncols=1, width=6.4, height=4.2):
    fig, axes = figures.new_figure(ncols, width, height)
    data = draw(axes)
    drawn[figures.save_figure(fig, os.path.join(out, filename))] = data
    md.extend([f"### {title}", "", f"![{title}]({filename})", ""])

  md += _summary_table(runs, keys)
  if len(runs) > 1:
    md += ["## Across runs", ""]
    if LAMBDA in keys:
      add(
        "lambda.png", "Figs. 4/5: final accuracies vs λ", lambda a: figures.plot_lambda(a, runs), 3, 4.6, 4.0
      )
      add(
        "lambda_curves.png",
        "Figs. 4/5 over training, one line per run",
        lambda a: figures.plot_lambda_curves(a, runs),
        3,
        4.6,
        4.0,
      )
    add(
      "per_layer.png",
      "Figs. 8/9: final values per layer",
      lambda a: figures.plot_per_layer(a, runs),
      3,
      4.6,
      4.2,
    )
  for run in runs if per_run or len(runs) == 1 else []:
    prefix = "" if len(runs) == 1 else f"{_slug(run.name)}__"
    md += [f"## Run {run.name}" + (f" ({run_label(run, keys)})" if keys else ""), "", f"`{run.workdir}`", ""]
    if not run.metrics:
      md += ["(no evaluations logged yet)", ""]
      continue
    add(f"{prefix}accuracy.png", "Fig. 2A: accuracy vs epoch", lambda a, r=run: figures.plot_accuracy(a, r))
    if run.offline:
      add(
        f"{prefix}online_offline.png",
        "Fig. 2B: online vs offline heads",
        lambda a, r=run: figures.plot_online_offline(a, r),
      )
    if len(run.layers()) > 1:
      add(
        f"{prefix}layers.png",
        "Fig. 2C: random-label accuracy per layer",
        lambda a, r=run: figures.plot_layers(a, r),
      )
      add(
        f"{prefix}layer_map.png",
        "Layer × epoch memorization map",
        lambda a, r=run: figures.plot_layer_map(a, r),
        height=max(2.6, 0.45 * len(run.layers()) + 1.6),
      )
    if run.layers("probe", "train_accuracy"):
      add(
        f"{prefix}probes.png",
        "Fig. 9: class probes per layer",
        lambda a, r=run: figures.plot_probes(a, r),
        2,
        5.4,
      )
    md += _memorization_section(run, out)
  rundir.atomic_write(os.path.join(out, "report.md"), "\n".join(md) + "\n")
  return drawn


def _summary_table(runs: Sequence[RunLogs], keys: Sequence[str]) -> list[str]:
  layers = list(dict.fromkeys(lay for r in runs for lay in r.layers()))
  cols = ["run", *keys, "epoch", "train", "test", "gap", *[f"RLP {lay}" for lay in layers], "chance"]
  lines = [
    "## Final metrics",
    "",
    "| " + " | ".join(SHORT_NAMES.get(c, c) for c in cols) + " |",
    "|" + "---|" * len(cols),
  ]
  for r in runs:
    f = r.final
    tr, te = f.get("train/accuracy"), f.get("test/accuracy")
    cells = [
      r.name,
      *[fmt_value(r.config.get(k)) for k in keys],
      fmt_value(f.get("epoch", "")),
      _num(tr),
      _num(te),
      _num(tr - te if tr is not None and te is not None else None),
      *[_num(f.get(f"rlp/{lay}/accuracy")) for lay in layers],
      _num(r.chance(layers[0]) if layers else None),
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return lines + [""]


def _num(v) -> str:
  return "" if v is None else f"{v:.4f}"


def _memorization_section(run: RunLogs, out: str) -> list[str]:
  mem = run.memorization
  if not mem:
    return []
  capacity = mem.get("capacity", {})
  level = next(iter(capacity.values()), {}).get("level", 0.95)  # one level for all: analyze's
  lines = [
    "### Memorization scores and capacity",
    "",
    f"Per-example score `{mem.get('score')}` on `{mem.get('layer')}` at step {mem.get('step')}.",
    "",
    f"| layer | capacity (chance-corrected) | {level:.0%} CI | random-label acc | chance | label draws |",
    "|---|---|---|---|---|---|",
  ]
  for layer, c in capacity.items():
    lines.append(
      f"| {layer} | {c['estimate']:.4f} | [{c['ci_low']:.4f}, {c['ci_high']:.4f}] | "
      f"{c['accuracy']:.4f} | {c['chance']:.4f} | {c['num_heads']} |"
    )
  lines.append("")
  if "noisy_vs_clean_auc" in mem:
    lines += [f"ROC AUC of the score for noisy vs clean labels: {mem['noisy_vs_clean_auc']:.4f}", ""]
  if "external" in mem:
    lines += [
      f"Spearman correlation with the external score: {mem['external']['spearman']:.4f} "
      f"({mem['external']['num_examples']} examples)",
      "",
    ]
  grid = mem.get("image_grid")
  grid = grid if grid is None or os.path.isabs(grid) else os.path.join(run.workdir, grid)
  if grid and os.path.exists(grid):
    lines += [f"![most / least memorized examples per class]({os.path.relpath(grid, out)})", ""]
  return lines
