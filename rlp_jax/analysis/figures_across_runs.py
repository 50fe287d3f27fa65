"""Figures across runs: λ sweeps and per-layer comparisons (docs/design.md §4, §6; figures.py's rules).

4/5 lambda.png        final random-label / train / test accuracy vs λ (log axis; λ = 0 drawn at the left,
                      one decade below the smallest λ > 0, after an axis break)
    lambda_curves.png the three accuracies vs epoch, one line per λ
8/9 per_layer.png     final random-label accuracy and probe train/test accuracy per layer, one line per
                      run (per λ when the runs differ in λ); a gap where a run has no head
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from rlp_jax.analysis.figures import (
  RANDOM_LABELS,
  below,
  chance_line,
  finish,
  layer_sort_key,
  main_layer,
  palette,
  show_chance,
  suptitle,
)
from rlp_jax.analysis.run_logs import LAMBDA, RunLogs, differing_keys, run_label


def lambda_positions(lams: Sequence[float], all_lams: Sequence[float] | None = None):
  """x positions on a log10 axis for λ values, with λ = 0 one decade left of the smallest λ > 0.

  The smallest λ > 0 is taken among ``all_lams`` (default: ``lams``). Returns (positions, the position of
  λ = 0 or None).
  """
  lams = np.asarray(lams, float)
  ref = np.asarray(lams if all_lams is None else all_lams, float)
  pos = ref[ref > 0]
  zero_at = None
  if (ref == 0).any() or (lams == 0).any():
    zero_at = math.floor(np.log10(pos.min())) - 1.0 if len(pos) else 0.0
  x = np.log10(np.where(lams > 0, lams, 1.0))
  return np.where(lams > 0, x, zero_at if zero_at is not None else np.nan), zero_at


def lambda_axis(ax, all_lams: Sequence[float]):
  """Decade ticks for λ > 0, a tick '0' for λ = 0, and an axis break between them."""
  _, zero_at = lambda_positions(all_lams)
  logs = np.log10([v for v in all_lams if v > 0])
  ticks = [float(t) for t in range(math.floor(logs.min()), math.ceil(logs.max()) + 1)] if len(logs) else []
  if len(ticks) > 8:  # many decades: label every other one
    ticks = ticks[:: math.ceil(len(ticks) / 8)]
  labels = [f"$10^{{{int(t)}}}$" for t in ticks]
  if zero_at is not None:
    ticks, labels = [zero_at, *ticks], ["0", *labels]
  ax.set_xticks(ticks)
  ax.set_xticklabels(labels)
  if zero_at is not None and len(logs):
    brk = zero_at + 0.5
    # A white band over every line at the break, so that none (the chance line included) reads as
    # continuing across it; then the break's own marks.
    ax.axvspan(brk - 0.08, brk + 0.08, color="white", zorder=2.6)
    ax.axvline(brk, color="0.6", lw=0.8, ls=(0, (2, 2)), zorder=2.7)
    ax.text(
      brk,
      0.0,
      "//",
      transform=ax.get_xaxis_transform(),
      ha="center",
      va="center",
      fontsize=10,
      color="0.3",
      bbox=dict(fc="white", ec="none", pad=0.5),
    )
  ax.set_xlabel("regularization strength λ (log scale; 0 = none)")


def _groups(runs: Sequence[RunLogs], keys: Sequence[str]) -> dict[str, list[RunLogs]]:
  """Runs grouped by every differing key except λ (one line per group in the λ panels)."""
  others = [k for k in keys if k != LAMBDA]
  groups: dict[str, list[RunLogs]] = {}
  for r in runs:
    groups.setdefault(run_label(r, others) if others else "", []).append(r)
  return groups


def accuracy_panels(layer: str | None):
  """(log key, panel title, y label) of the three panels of Figs. 4/5."""
  return (
    (f"rlp/{layer}/accuracy", f"random labels ({layer} head)", RANDOM_LABELS),
    ("train/accuracy", "class labels, train set", "train accuracy"),
    ("test/accuracy", "class labels, test set", "test accuracy"),
  )


def plot_lambda(axes, runs: Sequence[RunLogs], layer: str | None = None) -> dict:
  """Figs. 4/5: final random-label, train and test accuracy vs λ (one line per group of other settings)."""
  keys = differing_keys(runs)
  layer = layer or main_layer(runs[0])
  data = {}
  lams_all = [float(r.config.get(LAMBDA, 0.0)) for r in runs]
  groups = _groups(runs, keys)
  colors = palette(len(groups), "tab10") if len(groups) > 1 else ["C0"]
  for ax, (key, title, ylabel) in zip(axes, accuracy_panels(layer)):
    for (group, members), c in zip(groups.items(), colors):
      members = sorted(members, key=lambda r: float(r.config.get(LAMBDA, 0.0)))
      lams = np.array([float(r.config.get(LAMBDA, 0.0)) for r in members])
      ys = np.array([r.final.get(key, np.nan) for r in members], float)
      x, _ = lambda_positions(lams, lams_all)
      pos = lams > 0
      ax.plot(x[pos], ys[pos], "-o", color=c, label=group or None)
      if (~pos).any():  # λ = 0 across the axis break: its own marker, a dotted link
        ax.plot(x[~pos], ys[~pos], "o", color=c)
        if pos.any():
          ax.plot([x[~pos][-1], x[pos][0]], [ys[~pos][-1], ys[pos][0]], ":", color=c, lw=1)
      data[f"{key} {group}".strip()] = (lams, ys)
    chance = runs[0].chance(layer) if key.startswith("rlp/") else None
    chance_line(ax, chance)
    lambda_axis(ax, lams_all)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      below(ax)
    show_chance(ax, chance)
  suptitle(axes, "Final accuracy vs regularization strength λ", runs)
  return data


def plot_lambda_curves(axes, runs: Sequence[RunLogs], layer: str | None = None) -> dict:
  """Figs. 4/5 over training: random-label, train and test accuracy vs epoch, one line per run (by λ)."""
  keys = differing_keys(runs)
  layer = layer or main_layer(runs[0])
  ordered = sorted(runs, key=lambda r: (float(r.config.get(LAMBDA, 0.0)), r.name))
  colors = palette(len(ordered))
  data = {}
  for ax, (key, title, ylabel) in zip(axes, accuracy_panels(layer)):
    for r, c in zip(ordered, colors):
      x, y = r.series(key)
      label = run_label(r, keys)
      ax.plot(x, y, "-", color=c, label=label)
      data[f"{key} {label}"] = (x, y)
    chance = runs[0].chance(layer) if key.startswith("rlp/") else None
    chance_line(ax, chance)
    finish(ax, "epoch", ylabel, title)
    show_chance(ax, chance)
  suptitle(axes, "Accuracy during training, one line per run", runs)
  return data


def _chance(ordered: Sequence[RunLogs], prefix: str) -> float | None:
  """Chance for a per-layer panel: 1/n of the random labels (``rlp``), 1/classes (``probe``)."""
  if not ordered:
    return None
  if prefix == "probe":
    return ordered[0].class_chance
  rlp_layers = ordered[0].layers()
  return ordered[0].chance(rlp_layers[0]) if prefix == "rlp" and rlp_layers else None


def plot_per_layer(axes, runs: Sequence[RunLogs]) -> dict:
  """Figs. 8/9: final random-label accuracy and probe train / test accuracy per layer, one line per run.

  Random-label accuracy is on the left, probe train and test accuracy in the middle and on the right. A layer
  without a head (or probe) is a gap: no line is drawn across it.
  """
  keys = differing_keys(runs)
  ordered = sorted(runs, key=lambda r: (float(r.config.get(LAMBDA, 0.0)), r.name))
  colors = palette(len(ordered))
  data = {}
  panels = (
    ("rlp", "accuracy", "random-label head", RANDOM_LABELS),
    ("probe", "train_accuracy", "class-label probe, train set", "class accuracy, train set"),
    ("probe", "test_accuracy", "class-label probe, test set", "class accuracy, test set"),
  )
  # One x position per layer, shared by the three panels (heads and probes may read different layers).
  layer_order = sorted(
    {lay for r in ordered for p, suf, *_ in panels for lay in r.layers(p, suf)}, key=layer_sort_key
  )
  for ax, (prefix, suffix, title, ylabel) in zip(axes, panels):
    for r, c in zip(ordered, colors):
      present = [lay for lay in layer_order if f"{prefix}/{lay}/{suffix}" in r.final]
      if not present:
        continue
      # NaN where the run has no value: matplotlib breaks the line there, so no segment suggests a
      # measurement between two layers that were not both measured.
      y_all = np.array([r.final.get(f"{prefix}/{lay}/{suffix}", np.nan) for lay in layer_order], float)
      label = run_label(r, keys)
      ax.plot(np.arange(len(layer_order)), y_all, "-o", color=c, label=label)
      data[f"{prefix}/{suffix} {label}"] = (present, y_all[np.isfinite(y_all)])
      own = r.final.get(f"{suffix.split('_')[0]}/accuracy") if prefix == "probe" else None
      if own is not None:  # the network's own class head on the same set: what a probe can approach
        ax.axhline(own, color=c, ls="--", lw=1, alpha=0.7, label=f"{label}: the network's own class head")
    ax.set_xticks(range(len(layer_order)))
    ax.set_xticklabels(layer_order, rotation=30, ha="right")
    if not any(line.get_label() for line in ax.lines):
      note = "no class probes in these runs (probes.layers)" if prefix == "probe" else "no RLP heads"
      ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", color="0.4")
    chance = _chance(ordered, prefix)
    chance_line(ax, chance, "chance 1/n" if prefix == "rlp" else "chance 1/classes")
    finish(ax, "layer (input → output)", ylabel, title, legend=False)
    if ax.get_legend_handles_labels()[0]:
      below(ax, -0.32)  # under the rotated layer names and the axis label
    show_chance(ax, chance)
  suptitle(axes, "Final accuracy per layer", runs)
  return data
