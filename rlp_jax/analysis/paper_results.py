"""The tables and figures of a small reproduction of the paper (configs/paper_<dataset>.py, docs/results.md).

``write`` reads only logs (metrics.jsonl, offline.jsonl, memorization.json; analysis/run_logs.py) and
writes ``out/<study>.png`` and ``out/tables.md``. For every study of the config (infra/studies.py): each
(value, λ) cell pooled over seeds into a mean with its 95% t-interval, the epoch by which the training
labels are fitted, and the paired differences (same seed) that decide a verdict: each value against the
study's first, and each λ against λ = 0. Then Fig. 2A/2B over the seeds of the base run (online head,
offline heads and converged probe on every snapshot) and the noisy-vs-clean AUCs of per-example scores.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from rlp_jax.analysis import figures, figures_across_runs, sweep
from rlp_jax.analysis.run_logs import LAMBDA, RunLogs, find_runs
from rlp_jax.infra import rundir
from rlp_jax.infra.studies import Study

LAYER = "pre_logits"
RANDOM = f"rlp/{LAYER}/accuracy"
FITTED = 0.99  # train accuracy at which the training labels (noisy ones included) count as fitted
METRICS = (RANDOM, "train/accuracy", "test/accuracy")

# (value, λ) -> {seed: run}
Cells = Mapping[tuple, Mapping[int, RunLogs]]


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
  """(mean, low, high): the t-interval of the mean over seeds (NaN bounds with one value)."""
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
  if len(v) < 2:
    return (float(v.mean()) if len(v) else math.nan), math.nan, math.nan
  half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
  return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def _fmt(m: float, lo: float, hi: float, digits: int = 3, sign: str = "") -> str:
  if math.isnan(lo):
    return f"{m:{sign}.{digits}f}"
  return f"{m:{sign}.{digits}f} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def _value(v) -> str:
  return f"{v:g}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------------------------------
# Runs by study
# ----------------------------------------------------------------------------------------------------


def cells(grid: Sequence[tuple], runs: Mapping[str, RunLogs]) -> Cells:
  """The study's finished runs as {(value, λ): {seed: run}} (``grid``: infra/studies.grid's tuples)."""
  out: dict[tuple, dict[int, RunLogs]] = collections.defaultdict(dict)
  for value, lam, seed, point in grid:
    run = runs.get(sweep.run_name(point))
    if run is not None and run.final:
      out[(value, lam)][seed] = run
  return dict(out)


def fitted_epoch(run: RunLogs) -> float | None:
  """The first evaluated epoch whose train accuracy (on the trained-on labels) reaches ``FITTED``."""
  for r in run.metrics:
    if r.get("train/accuracy", 0.0) >= FITTED:
      return float(r["epoch"])
  return None


def paired(a: Mapping[int, RunLogs], b: Mapping[int, RunLogs], key: str) -> list[float]:
  """Per seed present in both: b's final ``key`` minus a's."""
  both = sorted(s for s in set(a) & set(b) if key in a[s].final and key in b[s].final)
  return [b[s].final[key] - a[s].final[key] for s in both]


def study_table(study: Study, by_cell: Cells) -> list[str]:
  """One row per (value, λ): seeds, random-label accuracy of both layers, train and test accuracy."""
  rows = []
  for (value, lam), seeds in by_cell.items():
    runs = list(seeds.values())
    acc = [
      _fmt(*mean_ci([r.final.get(k) for r in runs]), 4 if k.startswith("rlp/") else 3)
      for k in ("rlp/block_1/accuracy", RANDOM, "train/accuracy", "test/accuracy")
    ]
    epochs = [fitted_epoch(r) for r in runs]
    fit = "not fitted" if None in epochs else f"{max(epochs):g}"
    rows.append([_value(value), f"{lam:g}", len(runs), *acc, fit])
  header = [study.axis, "λ", "seeds", "rnd acc. block_1", f"rnd acc. {LAYER}", "train acc.", "test acc."]
  return _table([*header, f"train ≥ {FITTED} by epoch"], rows)


def _chances(by_cell: Cells) -> int:
  """How many chance levels (1/n) the study's runs have."""
  return len({r.chance(LAYER) for cell in by_cell.values() for r in cell.values()})


def key_name(key: str) -> str:
  return LAYER + (", chance-corrected" if key.endswith("chance_corrected") else "")


def effects(study: Study, by_cell: Cells) -> list[str]:
  """Paired differences (mean [95% t-interval] and per seed): each value vs the first, each λ vs λ = 0."""
  values = list(study.values)
  lams = sorted({lam for _, lam in by_cell})
  axis = study.axis
  # Across n, raw accuracies differ by their chance 1/n: compare the chance-corrected values there.
  rnd = RANDOM.replace("/accuracy", "/chance_corrected") if _chances(by_cell) > 1 else RANDOM
  if axis == LAMBDA:
    pairs = [(f"λ={v:g} − λ=0", (0.0, 0.0), (v, v)) for v in values if v]
  else:
    first = _value(values[0])
    pairs = [
      (f"{axis}={_value(v)} − {first} at λ={lam:g}", (values[0], lam), (v, lam))
      for lam in lams
      for v in values[1:]
    ]
    pairs += [
      (f"λ={lam:g} − λ=0 at {axis}={_value(v)}", (v, 0.0), (v, lam)) for v in values for lam in lams if lam
    ]
  lines = []
  for what, a, b in pairs:
    if a not in by_cell or b not in by_cell:
      continue
    for key, name in ((rnd, "rnd acc. " + key_name(rnd)), ("test/accuracy", "test acc.")):
      d = paired(by_cell[a], by_cell[b], key)
      if d:
        per_seed = ", ".join(f"{x:+.3f}" for x in d)
        lines.append(f"- {what}, Δ {name}: {_fmt(*mean_ci(d), sign='+')} (per seed {per_seed})")
  return [*lines, ""] if lines else []


def plot_study(axes, study: Study, by_cell: Cells) -> dict:
  """Random-label, train and test accuracy against the study's values, one line per λ (seeds as dots)."""
  values = list(dict.fromkeys(v for v, _ in by_cell))
  lams = sorted({lam for _, lam in by_cell})
  if study.axis == LAMBDA:
    x_of = dict(zip(values, figures_across_runs.lambda_positions(values)[0]))
    lines = {"": [(v, (v, v)) for v in values]}
  else:
    x_of = {v: float(i) for i, v in enumerate(values)}
    lines = {f"λ={lam:g}": [(v, (v, lam)) for v in values if (v, lam) in by_cell] for lam in lams}
  every = [r for cell in by_cell.values() for r in cell.values()]
  data = {}
  for ax, (key, title, ylabel) in zip(axes, figures_across_runs.accuracy_panels(LAYER)):
    for c, (label, members) in zip(figures.palette(len(lines), "tab10"), lines.items()):
      xs = np.array([x_of[v] for v, _ in members])
      cis = np.array([mean_ci([r.final.get(key) for r in by_cell[cell].values()]) for _, cell in members])
      for xi, (_, cell) in zip(xs, members):
        ys = [r.final.get(key, np.nan) for r in by_cell[cell].values()]
        ax.plot([xi] * len(ys), ys, "o", color=c, alpha=0.35, ms=4)
      # An accuracy lies in [0, 1]: a t-interval of 3 seeds may not, and is drawn clipped.
      err = np.abs(np.clip(cis[:, 1:], 0.0, 1.0) - cis[:, :1]).T
      ax.errorbar(xs, cis[:, 0], yerr=np.nan_to_num(err), fmt="-s", color=c, capsize=4, label=label or None)
      data[f"{key} {label}".strip()] = (xs, cis)
    if study.axis == LAMBDA:
      figures_across_runs.lambda_axis(ax, values)
    else:
      ax.set_xticks(list(x_of.values()))
      ax.set_xticklabels([_value(v) for v in values])
      ax.set_xlim(-0.4, len(values) - 0.6)
    # One chance line when the runs share n; across n (A.3) each point has its own 1/n.
    chance = every[0].chance(LAYER) if key == RANDOM and _chances(by_cell) == 1 else None
    figures.chance_line(ax, chance)
    figures.finish(ax, "λ" if study.axis == LAMBDA else study.axis, ylabel, title, legend=len(lines) > 1)
    figures.show_chance(ax, chance)
  seeds = sorted({s for cell in by_cell.values() for s in cell})
  figures.suptitle(axes, f"{study.title} ({len(seeds)} seeds: dots; mean and 95% t-interval)", every)
  return data


# ----------------------------------------------------------------------------------------------------
# Fig. 2A/2B over seeds, and the per-example scores
# ----------------------------------------------------------------------------------------------------


def fig2_table(runs: Sequence[RunLogs]) -> list[str]:
  """Per snapshot epoch, over the runs' seeds: the online head, offline heads and the converged probe.

  (fig2.png draws the first seed's run; this table pools them all.)
  """
  by_epoch: dict[float, list[dict]] = collections.defaultdict(list)
  for run in runs:
    for rec in run.offline:
      by_epoch[float(rec["epoch"])].append(rec)
  layers = runs[0].layers("offline") if runs else []
  rows = []
  for epoch in sorted(by_epoch):
    recs = by_epoch[epoch]
    cells_ = []
    for layer in layers:
      for kind in ("online", "offline", "probe"):
        vals = [r.get(f"{kind}/{layer}/accuracy") for r in recs]
        cells_.append(_fmt(*mean_ci(vals), 4) if any(v is not None for v in vals) else "–")
    rows.append([f"{epoch:g}", len(recs), *cells_])
  header = [f"{layer}: {kind}" for layer in layers for kind in ("online", "offline", "probe")]
  return _table(["epoch", "seeds", *header], rows)


def auc_table(runs: Sequence[RunLogs]) -> list[str]:
  """Noisy-vs-clean ROC AUC per score at each scored checkpoint, over the seeds of each (noise, λ)."""
  groups: dict[tuple, list[dict]] = collections.defaultdict(list)
  for r in runs:
    mem = r.memorization or {}
    for row in mem.get("noisy_vs_clean", []):
      key = (
        r.config.get("label_noise"),
        r.config.get(LAMBDA),
        row["epoch"],
        row["score"],
        row["layer"] or "",
      )
      groups[key + (row["heads"],)].append(row)
  rows = [
    [f"{p:g}", f"{lam:g}", f"{ep:g}", score, layer, heads, len(rs), _fmt(*mean_ci([x["auc"] for x in rs]))]
    for (p, lam, ep, score, layer, heads), rs in sorted(groups.items(), key=lambda kv: _sortable(kv[0]))
  ]
  header = ["label noise", "λ", "epoch", "score", "layer", "heads", "seeds", "AUC (noisy = positive)"]
  return _table(header, rows) if rows else []


def _sortable(key: tuple) -> tuple:
  """Numbers first and in numeric order, then text (None as empty text)."""

  def part(x):
    if isinstance(x, int | float):
      return (0, x, "")
    return (1, 0, "" if x is None else str(x))

  return tuple(part(x) for x in key)


def _save(out: str, name: str, ncols: int, draw, width=4.6, height=4.0) -> str:
  fig, axes = figures.new_figure(ncols, width, height)
  fig.set_dpi(80)
  draw(axes)
  return figures.save_figure(fig, os.path.join(out, name))


def write(
  root: str,
  out: str,
  *,
  grids: Sequence[tuple[Study, Sequence[tuple]]],
  fig2: Sequence[str],
  command: str,
  wall_s: dict | None = None,
) -> str:
  """Figures and ``tables.md`` in ``out`` from the runs under ``root``; returns the tables' path.

  ``grids``: each study with its (value, λ, seed, point) tuples; ``fig2``: the names of the runs whose
  offline heads draw Fig. 2B; ``command``: what regenerates them, for the tables' heading.
  """
  os.makedirs(out, exist_ok=True)
  runs = {r.name: r for r in find_runs([root])}
  md = [f"# Reproduction tables (generated by `{command}`)", ""]
  fig2_runs = [runs[n] for n in fig2 if n in runs and runs[n].offline]
  if fig2_runs:
    first = fig2_runs[0]
    draw = lambda a: (figures.plot_accuracy(a[0], first), figures.plot_online_offline(a[1], first))
    _save(out, "fig2.png", 2, draw, 5.6, 4.4)
    md += ["## Fig. 2A/2B: online head, offline heads and the converged probe per snapshot", ""]
    md += fig2_table(fig2_runs)
  for study, grid in grids:
    by_cell = cells(grid, runs)
    if not by_cell:
      continue
    _save(out, f"{study.name}.png", 3, lambda a, s=study, c=by_cell: plot_study(a, s, c))
    md += [f"## {study.title}", "", f"![{study.name}]({study.name}.png)", ""]
    md += study_table(study, by_cell) + effects(study, by_cell)
  noisy = [r for r in runs.values() if r.config.get("label_noise") and r.memorization and r.final]
  if noisy:
    md += ["## Noisy vs clean: ROC AUC of per-example scores", ""] + auc_table(noisy)
  if wall_s:
    md += ["## Wall time", ""] + _table(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in wall_s.items()])
  path = os.path.join(out, "tables.md")
  rundir.atomic_write(path, "\n".join(md) + "\n")
  return path
