"""Figures like the paper's from the logs of one run, and what every figure shares (docs/design.md §4, §6).

Figures (paper numbering), each drawn by ``report.make_report`` only when its data exists:

  per run   2A accuracy.png       class train/test accuracy and random-label accuracy vs epoch, chance 1/n
            2B online_offline.png online head vs a fresh head trained on the frozen checkpoint, per layer
            2C layers.png         random-label accuracy of every measured layer vs epoch
               layer_map.png      the same as a layer x epoch heat map
            9  probes.png         per-layer class probes, train and test accuracy vs epoch, chance 1/classes
  several   (figures_across_runs.py) 4/5 lambda.png, lambda_curves.png, 8/9 per_layer.png

Every figure has a title naming what it shows and the runs' setting (dataset, model, λ, n; never their
directory); every random-label axis shows chance 1/n, on a log axis when chance is too small to see on a
0-1 axis. Every plotting function takes a matplotlib Axes and returns the data it drew, ``{series: (x, y)}``,
so tests (and notebooks) can check the picture against the log.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from rlp_jax.analysis.run_logs import RunLogs, setting

# Chance below this is a hairline at the bottom of a 0-1 axis (n = 200: 0.005): such an axis is drawn on
# a log scale, where chance and "10x chance" are as far apart as they are meaningful.
LOG_BELOW = 0.05
RANDOM_LABELS = "random-label accuracy"

# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def new_figure(ncols: int = 1, width: float = 6.4, height: float = 4.2):
  """``(figure, Axes or array of ncols Axes)``: one row of panels, ``width`` each."""
  plt = _plt()
  fig, axes = plt.subplots(1, ncols, figsize=(width * ncols if ncols > 1 else width, height), dpi=110)
  return fig, axes


def save_figure(fig, path: str) -> str:
  """Writes and closes ``fig`` (a report draws dozens; open figures would pile up); returns ``path``."""
  fig.tight_layout()
  # The legends below the axes are kept out of tight_layout (``below``), and named here so that the image
  # grows to hold them.
  legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
  fig.savefig(path, bbox_inches="tight", bbox_extra_artists=[*legends, *fig.axes, *fig.texts])
  _plt().close(fig)
  return path


def chance_line(ax, value, label="chance 1/n"):
  if value is not None:
    # Dotted grey, unlike every data line (the class head is dashed black).
    ax.axhline(value, color="0.3", ls=(0, (1, 1.5)), lw=1.8, zorder=1.5, label=f"{label} = {value:.3g}")


def show_chance(ax, chance: float | None, log_below: float = LOG_BELOW):
  """After plotting: a log y axis when ``chance`` is too small to see on a linear one.

  The lower limit goes below both chance and the lowest value drawn (a line at the axis' edge is easily
  missed).
  """
  if chance is None or chance >= log_below:
    return
  # Data lines only: a vertical marker (the λ axis break) spans the axes, not the data.
  ys = [np.asarray(line.get_ydata(), float) for line in ax.lines if line.get_transform() is ax.transData]
  ys = np.concatenate([y[np.isfinite(y) & (y > 0)] for y in ys]) if ys else np.array([])
  top = max(float(ys.max()) if len(ys) else chance, chance)
  bottom = min(float(ys.min()) if len(ys) else chance, chance)
  ax.set_yscale("log")
  ax.set_ylim(bottom / 1.6, min(top * 1.6, 1.5))
  from matplotlib import ticker

  # Ticks at 1, 2, 5 per decade, written 0.005 rather than 5×10⁻³: readable even over a single decade.
  ax.yaxis.set_major_locator(ticker.LogLocator(10, subs=(1.0, 2.0, 5.0)))
  ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.yaxis.set_minor_formatter(ticker.NullFormatter())
  ax.set_ylabel(f"{ax.get_ylabel()} (log scale)")


def finish(ax, xlabel: str, ylabel: str, title: str = "", legend: bool = True):
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=10)
  if xlabel.startswith("epoch"):  # whole epochs: no tick at 1.25
    from matplotlib import ticker

    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.grid(alpha=0.3)
  if legend and ax.get_legend_handles_labels()[0]:
    below(ax)


def below(ax, offset: float = -0.2) -> None:
  """The legend under the axes, never over the curves (save_figure keeps it inside the image).

  ``offset`` (in axes heights) clears the x axis' labels: lower it for rotated tick labels.
  """
  legend = ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, offset), ncol=2, frameon=False)
  # Out of tight_layout (which would shrink the axes to make room and pull the axis label into the legend);
  # save_figure's bbox_inches="tight" widens the image to hold it instead.
  legend.set_in_layout(False)


def suptitle(axes, what: str, runs: Sequence[RunLogs], *, with_n: bool = True):
  axes[0].figure.suptitle(f"{what}\n{setting(runs, with_n=with_n)}", fontsize=11)


def palette(n: int, cmap: str = "viridis"):
  """n colors: categorical C0, C1, ... for ``tab10``; else evenly spaced along the colormap (ordered data)."""
  if cmap == "tab10":
    return [f"C{i % 10}" for i in range(n)]
  plt = _plt()
  return [plt.get_cmap(cmap)(x) for x in np.linspace(0.0, 0.85, max(n, 1))]


def layer_sort_key(name: str):
  """Model order: block_1, block_2, ..., block_10, ..., then pre_logits (and anything else by name)."""
  m = re.fullmatch(r"block_(\d+)", name)
  if m:
    return (0, int(m.group(1)), "")
  return (2 if name == "pre_logits" else 1, 0, name)


# ----------------------------------------------------------------------------------------------------
# Per-run figures
# ----------------------------------------------------------------------------------------------------


def main_layer(run: RunLogs) -> str | None:
  """The layer of Fig. 2A: ``pre_logits`` if measured, else the deepest measured layer."""
  layers = run.layers()
  if "pre_logits" in layers:
    return "pre_logits"
  return layers[-1] if layers else None


def plot_accuracy(ax, run: RunLogs) -> dict:
  """Fig. 2A: class train/test accuracy and the random-label accuracy vs epoch, with the chance level."""
  data = {}
  for key, label in (("train/accuracy", "class labels, train"), ("test/accuracy", "class labels, test")):
    x, y = run.series(key)
    if len(x):
      ax.plot(x, y, "-", marker="o", ms=3, label=label)
      data[label] = (x, y)
  layer = main_layer(run)
  chance = run.chance(layer) if layer else None
  if layer:
    x, y = run.series(f"rlp/{layer}/accuracy")
    label = f"random labels, train ({layer} head)"
    ax.plot(x, y, "-", marker="s", ms=3, color="C3", label=label)
    data[label] = (x, y)
    chance_line(ax, chance)
  ax.set_ylim(-0.02, 1.02)
  finish(ax, "epoch", "accuracy", f"Class and random-label accuracy during training\n{setting([run])}")
  show_chance(ax, chance)
  return data


def plot_online_offline(ax, run: RunLogs) -> dict:
  """Fig. 2B: the online head's random-label accuracy against its controls.

  A fresh head trained offline on each checkpoint (offline.jsonl; at init alone from the run's own table
  otherwise) and the converged probe, on each checkpoint or at init and trained (docs/design.md §4).
  """
  data = {}
  layers = run.layers("offline") or list(run.controls)
  colors = palette(len(layers), "tab10") if len(layers) > 1 else ["C3"]
  last = run.final.get("epoch")
  for layer, c in zip(layers, colors):
    controls = run.controls.get(layer, {})
    x, y = run.series(f"offline/{layer}/accuracy", run.offline)
    if not len(x) and "offline_at_init" in controls:
      x, y = np.array([0.0]), np.array([controls["offline_at_init"]])
    if len(x):
      label = f"fresh head on the frozen network ({layer})"
      ax.plot(x, y, "-", marker="o", ms=4, color=c, label=label)
      data[label] = (x, y)
    x, y = run.series(f"probe/{layer}/accuracy", run.offline)
    style = ":"
    if not len(x) and "probe_at_init" in controls and "probe_trained" in controls and last is not None:
      # At init and trained only: two markers, no line suggesting what lies between.
      x, y = np.array([0.0, float(last)]), np.array([controls["probe_at_init"], controls["probe_trained"]])
      style = "none"
    if len(x):
      label = f"converged probe, blind to scale and budget ({layer})"
      ax.plot(x, y, ls=style, marker="s", ms=5, color=c, label=label)
      data[label] = (x, y)
    x, y = run.series(f"rlp/{layer}/accuracy")
    if len(x):
      label = f"head trained alongside ({layer})"
      ax.plot(x, y, "--", marker=".", ms=4, color=c, alpha=0.8, label=label)
      data[label] = (x, y)
  chance = run.chance(layers[0]) if layers else None
  chance_line(ax, chance)
  finish(
    ax,
    "epoch (checkpoint; 0 = initialization)",
    RANDOM_LABELS,
    f"Random-label accuracy: online head vs its controls\n{setting([run])}",
  )
  show_chance(ax, chance)
  return data


def plot_layers(ax, run: RunLogs) -> dict:
  """Fig. 2C: random-label accuracy of each measured layer vs epoch."""
  data = {}
  layers = run.layers()
  for layer, c in zip(layers, palette(len(layers), "plasma")):
    x, y = run.series(f"rlp/{layer}/accuracy")
    ax.plot(x, y, "-", marker="o", ms=3, color=c, label=layer)
    data[layer] = (x, y)
  chance = run.chance(layers[0]) if layers else None
  chance_line(ax, chance)
  finish(ax, "epoch", RANDOM_LABELS, f"Random-label accuracy of each layer's head\n{setting([run])}")
  show_chance(ax, chance)
  return data


def plot_layer_map(ax, run: RunLogs) -> dict:
  """Layer x epoch memorization map: random-label accuracy (color) of each layer (row) at each epoch."""
  layers = run.layers()
  epochs = np.array(sorted({r["epoch"] for r in run.metrics}), float)
  grid = np.full((len(layers), len(epochs)), np.nan)
  for j, r in enumerate(sorted(run.metrics, key=lambda r: r["epoch"])):
    for i, layer in enumerate(layers):
      grid[i, j] = r.get(f"rlp/{layer}/accuracy", np.nan)
  if not layers:
    return {}
  chance = run.chance(layers[0])
  lo = chance or np.nanmin(grid)
  hi = max(np.nanmax(grid), lo * 1.01 + 1e-6)
  from matplotlib import colors

  log = chance is not None and chance < LOG_BELOW
  norm = colors.LogNorm(lo, hi) if log else colors.Normalize(lo, hi)
  im = ax.imshow(
    grid,
    aspect="auto",
    origin="lower",
    cmap="magma",
    norm=norm,
    extent=(epochs[0] - 0.5, epochs[-1] + 0.5, -0.5, len(layers) - 0.5),
    interpolation="nearest",
  )
  ax.set_yticks(range(len(layers)))
  ax.set_yticklabels(layers)
  cbar = ax.figure.colorbar(im, ax=ax)
  if log:
    from matplotlib import ticker

    cbar.ax.yaxis.set_major_locator(ticker.LogLocator(10, subs=(1.0, 2.0, 5.0)))
    cbar.ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    cbar.ax.yaxis.set_minor_formatter(ticker.NullFormatter())
  scale = "log scale, " if log else ""
  cbar.set_label(f"{RANDOM_LABELS}\n({scale}darkest = chance" + (f" {chance:.3g})" if chance else ")"))
  finish(ax, "epoch", "layer", f"Random-label accuracy per layer and epoch\n{setting([run])}", legend=False)
  ax.grid(False)
  return {"epochs": epochs, "layers": layers, "accuracy": grid}


def plot_probes(axes, run: RunLogs) -> dict:
  """Fig. 9 (over training): per-layer class-probe accuracy vs epoch; train left, test right."""
  data = {}
  layers = run.layers("probe", "train_accuracy")
  for ax, split in zip(axes, ("train", "test")):
    for layer, c in zip(layers, palette(len(layers), "plasma")):
      x, y = run.series(f"probe/{layer}/{split}_accuracy")
      ax.plot(x, y, "-", marker="o", ms=3, color=c, label=layer)
      data[f"{split} {layer}"] = (x, y)
    x, y = run.series(f"{split}/accuracy")
    if len(x):
      ax.plot(x, y, "k--", lw=1, label="the network's own class head")
      data[f"{split} class head"] = (x, y)
    chance_line(ax, run.class_chance, "chance 1/classes")
    finish(ax, "epoch", f"class accuracy, {split} set", f"{split} set")
    show_chance(ax, run.class_chance)
  suptitle(axes, "Class accuracy of a linear probe on each layer's features", [run], with_n=False)
  return data
