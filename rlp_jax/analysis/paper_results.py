"""The tables and figures of a small reproduction of the paper (configs/paper_<dataset>.py, docs/results.md).

The sweep's runs sorted by experiment, aggregated over seeds with intervals, drawn and tabulated.

``write(root, out)`` reads only logs (metrics.jsonl, offline.jsonl, memorization.json; analysis/run_logs.py)
and writes ``out/*.png`` and ``out/tables.md``. Per-run figures are the report's own (analysis/figures.py);
what is new here is what the report does not do: seeds pooled into a mean with a 95% t-interval, the paired
label-noise comparison, the width and shuffled-label controls side by side, and the noisy-vs-clean AUCs.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Sequence

import numpy as np
from scipy import stats

from rlp_jax.analysis import figures, figures_across_runs
from rlp_jax.analysis.run_logs import LAMBDA, RunLogs, find_runs
from rlp_jax.infra import rundir

LAYER = "pre_logits"
RANDOM = f"rlp/{LAYER}/accuracy"


def _get(run: RunLogs, key: str, default=None):
  return run.config.get(key, default)


def classify(root: str, base_width: int) -> dict[str, list[RunLogs]]:
  """The sweep's runs by experiment: ``lambda``, ``noise``, ``shuffled``, ``width`` and ``fig2``.

  ``lambda`` (Figs. 4/5), ``noise`` (Fig. 7C), ``shuffled`` (A.2), ``width`` (A.9, λ = 0 and seed 0, the
  base width included) and ``fig2`` (the λ = 0, seed 0 run of the base width: the reproduction config's
  ``model.width``).
  """
  out: dict[str, list[RunLogs]] = collections.defaultdict(list)
  for run in find_runs([root]):
    plain = _get(run, "rlp.label_mode") == "fixed" and not _get(run, "label_noise")
    base = plain and _get(run, LAMBDA) == 0 and _get(run, "seed") == 0
    if _get(run, "rlp.label_mode") == "shuffled":
      out["shuffled"].append(run)
    elif _get(run, "label_noise"):
      out["noise"].append(run)
    elif plain and _get(run, "model.width") == base_width:
      out["lambda"].append(run)
    if base:
      out["width"].append(run)
    if base and _get(run, "model.width") == base_width:
      out["fig2"].append(run)
  return dict(out)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
  """(mean, low, high): the t-interval of the mean over seeds (NaN bounds with one value)."""
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
  if len(v) < 2:
    return (float(v.mean()) if len(v) else math.nan), math.nan, math.nan
  half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
  return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def _fmt(m: float, lo: float, hi: float, digits: int = 3) -> str:
  if math.isnan(lo):
    return f"{m:.{digits}f}"
  return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _by_lambda(runs: Sequence[RunLogs]) -> dict[float, list[RunLogs]]:
  groups: dict[float, list[RunLogs]] = collections.defaultdict(list)
  for r in sorted(runs, key=lambda r: (_get(r, LAMBDA), _get(r, "seed"))):
    if r.final:
      groups[float(_get(r, LAMBDA))].append(r)
  return dict(groups)


# ----------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------


def plot_lambda_seeds(axes, runs: Sequence[RunLogs]) -> dict:
  """Figs. 4/5 with seeds: final random-label, train and test accuracy vs λ.

  Each seed is a dot, the mean with its 95% t-interval an error bar.
  """
  groups = _by_lambda(runs)
  lams = np.array(sorted(groups))
  x, _ = figures_across_runs.lambda_positions(lams)
  data = {}
  for ax, (key, title, ylabel) in zip(axes, figures_across_runs.accuracy_panels(LAYER)):
    cis = np.array([mean_ci([r.final.get(key) for r in groups[v]]) for v in lams])
    for xi, v in zip(x, lams):
      ys = [r.final.get(key, np.nan) for r in groups[v]]
      ax.plot([xi] * len(ys), ys, "o", color="C0", alpha=0.35, ms=4)
    # An accuracy lies in [0, 1]: a t-interval of 3 seeds may not, and is drawn clipped.
    err = np.abs(np.clip(cis[:, 1:], 0.0, 1.0) - cis[:, :1]).T
    ax.errorbar(x, cis[:, 0], yerr=np.nan_to_num(err), fmt="-s", color="C0", capsize=4, label="mean, 95% CI")
    data[key] = (lams, cis)
    chance = runs[0].chance(LAYER) if key.startswith("rlp/") else None
    figures.chance_line(ax, chance)
    figures_across_runs.lambda_axis(ax, list(lams))
    figures.finish(ax, ax.get_xlabel(), ylabel, title)
    figures.show_chance(ax, chance)
  seeds = sorted({_get(r, "seed") for g in groups.values() for r in g})
  figures.suptitle(axes, f"Final accuracy vs λ ({len(seeds)} seeds: dots; mean and 95% t-interval)", runs)
  return data


def plot_controls(axes, runs: dict[str, list[RunLogs]], base_width: int, num_train: int):
  """The controls: Fig. 7C (label noise), A.9 (width) and A.2 (shuffled labels).

  Fig. 7C: test accuracy per seed, λ = 0 vs the largest λ, label noise; A.9: random-label accuracy vs width;
  A.2: shuffled vs fixed labels over training (``num_train`` bounds the examples scored).
  """
  noise, width, shuffled = runs.get("noise", []), runs.get("width", []), runs.get("shuffled", [])
  data = {}
  ax = axes[0]
  groups = _by_lambda(noise)
  lams = sorted(groups)
  for seed in sorted({_get(r, "seed") for r in noise}):
    ys = [
      next((r.final["test/accuracy"] for r in groups[v] if _get(r, "seed") == seed), np.nan) for v in lams
    ]
    ax.plot(range(len(lams)), ys, "-o", alpha=0.6, label=f"seed {seed}")
    data[f"noise seed {seed}"] = (lams, ys)
  ax.set_xticks(range(len(lams)))
  ax.set_xticklabels([f"λ={v:g}" for v in lams])
  ax.set_xlim(-0.4, len(lams) - 0.6)
  p = _get(noise[0], "label_noise") if noise else 0
  figures.finish(ax, "", "test accuracy", f"Fig. 7C: label noise {p:g}, test accuracy per seed")
  ax = axes[1]
  width = sorted((r for r in width if r.final), key=lambda r: _get(r, "model.width"))
  ws = [_get(r, "model.width") for r in width]
  for layer, c in (("pre_logits", "C3"), ("block_1", "C1")):
    ys = [r.final.get(f"rlp/{layer}/accuracy", np.nan) for r in width]
    ax.plot(ws, ys, "-o", color=c, label=f"{layer} head")
    data[f"width {layer}"] = (ws, ys)
  ax.set_xscale("log", base=2)
  ax.set_xticks(ws)
  ax.set_xticklabels([str(w) for w in ws])
  chance = width[0].chance(LAYER) if width else None
  figures.chance_line(ax, chance)
  figures.finish(ax, "CNN width (channels)", figures.RANDOM_LABELS, "A.9: width, λ = 0, seed 0")
  figures.show_chance(ax, chance)
  ax, chance = axes[2], None
  fixed = [r for r in width if _get(r, "model.width") == base_width]
  for run, label, c in [(r, "fixed labels", "C3") for r in fixed] + [
    (r, "shuffled labels", "C0") for r in shuffled
  ]:
    x, y = run.series(RANDOM)
    ax.plot(x, y, "-", color=c, label=f"{label} ({LAYER})")
    data[label] = (x, y)
  if shuffled:
    chance = shuffled[0].chance(LAYER)
    m = _scored(shuffled[0], num_train)
    sd = math.sqrt(chance * (1 - chance) / m)
    ax.axhspan(max(chance - 2.5 * sd, 1e-4), chance + 2.5 * sd, color="0.85", label="chance ± 2.5 sd")
    figures.chance_line(ax, chance)
  figures.finish(ax, "epoch", figures.RANDOM_LABELS, "A.2: shuffled labels, scored on an unseen draw")
  figures.show_chance(ax, chance)
  return data


def _scored(run: RunLogs, num_train: int) -> int:
  """How many training examples the run's random-label accuracy averages over."""
  subset = _get(run, "eval.train_examples")
  return num_train if subset is None or subset < 0 else min(subset, num_train)


def _save(out: str, name: str, ncols: int, draw, width=4.6, height=4.0) -> str:
  fig, axes = figures.new_figure(ncols, width, height)
  fig.set_dpi(80)
  draw(axes)
  return figures.save_figure(fig, os.path.join(out, name))


# ----------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def lambda_table(runs: Sequence[RunLogs]) -> list[str]:
  rows = []
  for lam, group in _by_lambda(runs).items():
    cells = [
      _fmt(*mean_ci([r.final.get(k) for r in group]), 4 if k == RANDOM else 3)
      for k in (RANDOM, "train/accuracy", "test/accuracy")
    ]
    rows.append([f"{lam:g}", len(group), *cells])
  return _table(["λ", "seeds", f"random-label acc. ({LAYER})", "train acc.", "test acc."], rows)


def noise_table(runs: Sequence[RunLogs]) -> list[str]:
  groups = _by_lambda(runs)
  lams = sorted(groups)
  seeds = sorted({_get(r, "seed") for r in runs})
  test = {(v, _get(r, "seed")): r.final["test/accuracy"] for v in lams for r in groups[v]}
  rows = [[s, *[f"{test.get((v, s), math.nan):.3f}" for v in lams]] for s in seeds]
  diffs = [
    test[(lams[-1], s)] - test[(lams[0], s)] for s in seeds if (lams[-1], s) in test and (lams[0], s) in test
  ]
  rows.append(["mean [95% CI]", *[_fmt(*mean_ci([test.get((v, s)) for s in seeds])) for v in lams]])
  lines = _table(["seed", *[f"test acc. λ={v:g}" for v in lams]], rows) + lambda_table(runs)
  m, lo, hi = mean_ci(diffs)
  return lines + [
    f"Paired difference λ={lams[-1]:g} − λ={lams[0]:g}: {_fmt(m, lo, hi)} (per seed: "
    + ", ".join(f"{d:+.3f}" for d in diffs)
    + ").",
    "",
  ]


def auc_table(runs: Sequence[RunLogs]) -> list[str]:
  """Noisy-vs-clean AUC per score at the last checkpoint, and the best (score, checkpoint) of each run.

  The AUC per score is the mean over the runs of each λ, with the range of the runs' bootstrap intervals.
  """
  rows, best = [], []
  for lam, group in _by_lambda(runs).items():
    mems = [r.memorization for r in group if r.memorization and "noisy_vs_clean" in r.memorization]
    if not mems:
      continue
    last = collections.defaultdict(list)
    for mem in mems:
      for row in mem["noisy_vs_clean"]:
        if row["step"] == mem["step"]:
          last[(row["score"], row["layer"] or "", row["heads"])].append(row)
      b = mem["noisy_vs_clean_best"]
      what = " ".join(x for x in (b["score"], b["layer"], b["heads"]) if x)
      best.append(
        f"λ={lam:g}: {what} at epoch {b['epoch']:g}: {b['auc']:.3f} [{b['ci_low']:.3f}, {b['ci_high']:.3f}]"
      )
    for (score, layer, heads), rs in last.items():
      aucs = [r["auc"] for r in rs]
      ci = f"[{min(r['ci_low'] for r in rs):.3f}, {max(r['ci_high'] for r in rs):.3f}]"
      rows.append(
        [
          f"{lam:g}",
          score,
          layer,
          heads,
          len(rs),
          f"{np.mean(aucs):.3f}",
          ", ".join(f"{a:.3f}" for a in aucs),
          ci,
        ]
      )
  lines = _table(["λ", "score", "layer", "heads", "runs", "mean AUC", "per run", "widest 95% CI"], rows)
  return (
    lines
    + ["Best score of each run (over every score and checkpoint):", ""]
    + [f"- {b}" for b in best]
    + [""]
  )


def write(
  root: str, out: str, *, base_width: int, num_train: int, command: str, wall_s: dict | None = None
) -> str:
  """Figures and ``tables.md`` in ``out`` from the runs under ``root``; returns the tables' path.

  ``base_width``: the reproduction config's model width (its Fig. 2 and λ runs); ``num_train``: the
  dataset's training examples; ``command``: what regenerates them, for the tables' heading.
  """
  os.makedirs(out, exist_ok=True)
  runs = classify(root, base_width)
  md = [f"# Reproduction tables (generated by `{command}`)", ""]
  if runs.get("fig2"):
    run = runs["fig2"][0]
    _save(
      out,
      "fig2.png",
      2,
      lambda a: (figures.plot_accuracy(a[0], run), figures.plot_online_offline(a[1], run)),
      5.6,
      4.4,
    )
    md += ["## Fig. 2A/2B (λ = 0, seed 0)", ""]
    layers = run.layers("offline")

    def pair(r, k):  # the online head has no evaluation at step 0
      online = f"{r[f'online/{k}/accuracy']:.4f}" if f"online/{k}/accuracy" in r else "–"
      return f"{online} / {r[f'offline/{k}/accuracy']:.4f}"

    rows = [[f"{r['epoch']:g}", *[pair(r, k) for k in layers]] for r in run.offline]
    md += _table(["epoch", *[f"{k}: online / offline" for k in layers]], rows)
  if runs.get("lambda"):
    _save(out, "lambda.png", 3, lambda a: plot_lambda_seeds(a, runs["lambda"]))
    md += ["## Figs. 4/5: λ sweep (mean [95% t-interval] over seeds)", ""] + lambda_table(runs["lambda"])
  _save(
    out,
    "controls.png",
    3,
    lambda a: plot_controls(a, runs, base_width, num_train),
  )
  if runs.get("noise"):
    md += [f"## Fig. 7C: label noise {_get(runs['noise'][0], 'label_noise'):g}", ""] + noise_table(
      runs["noise"]
    )
    md += ["## Noisy vs clean: ROC AUC of per-example scores (last checkpoint)", ""] + auc_table(
      runs["noise"]
    )
  if runs.get("shuffled"):
    r = runs["shuffled"][0]
    chance, m = r.chance(LAYER), _scored(r, num_train)
    acc = r.final.get(RANDOM, math.nan)
    z = (acc - chance) / math.sqrt(chance * (1 - chance) / m)
    md += [
      "## A.2: shuffled labels",
      "",
      f"Final {LAYER} random-label accuracy on the held-out draw: {acc:.4f} "
      f"(chance {chance:.4f}; {z:+.1f} binomial sd over {m} examples).",
      "",
    ]
  if runs.get("width"):
    rows = [
      [
        _get(r, "model.width"),
        *[f"{r.final.get(f'rlp/{k}/accuracy', math.nan):.4f}" for k in ("block_1", LAYER)],
        f"{r.final.get('test/accuracy', math.nan):.3f}",
      ]
      for r in sorted(runs["width"], key=lambda r: _get(r, "model.width"))
    ]
    md += ["## A.9: width (λ = 0, seed 0)", ""] + _table(["width", "block_1", LAYER, "test acc."], rows)
  if wall_s:
    md += ["## Wall time", ""] + _table(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in wall_s.items()])
  path = os.path.join(out, "tables.md")
  rundir.atomic_write(path, "\n".join(md) + "\n")
  return path
