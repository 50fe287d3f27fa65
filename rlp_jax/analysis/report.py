r"""The report of one or more runs: every figure their logs allow and one Markdown page showing them.

  python -m rlp_jax.report --workdir=DIR [--workdir=DIR ...] [--out=OUTDIR]

A ``--workdir`` is a run directory (it holds ``metrics.jsonl``) or a sweep root (its subdirectories are the
runs); what is read: analysis/run_logs.py; the figures: analysis/figures.py. Writes PNGs and ``report.md``
to ``--out``; by default (``default_out``) ``DIR/report`` for one ``--workdir``, ``PARENT/report`` for
several that share one parent directory (runs of one sweep), and for runs in different trees no default:
``--out`` is required (their common parent may be ``/`` or a directory the user never named).

``report.md`` is self-contained: every image it shows lies next to it (the memorization grid is copied in)
and is linked relatively, so the directory can be moved or shared as it is. The page holds a table of final
metrics (the record of each run's last epoch; blank while a run is unfinished), each figure with one line
saying what it shows, a run's memorization summary where ``memorization.json`` exists, and the log lines
that could not be read (they are also warned about on stderr).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Callable, Sequence

from rlp_jax.analysis import figures, figures_across_runs
from rlp_jax.analysis.run_logs import (
  CONTROLS,
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

SCORE_NAMES = {  # analysis/scores.py's names, in words
  "p_own": "probability of the example's own random label",
  "margin": "margin of the own random label's logit over the largest other",
  "correct": "whether the head predicts the own random label",
  "class_loss": "the classifier's loss on the label it was trained on",
}


CONTROL_NAMES = {
  "offline_at_init": "control @ init",
  "probe_at_init": "probe @ init",
  "probe_trained": "probe trained",
}
CONTROLS_NOTE = (
  "Random-label accuracy measures memorization only against its controls (docs/design.md §4): *control @ "
  "init* is a fresh head with the online head's budget on the network at initialization (the paper's "
  "Fig. 2B control); the *probe* is the converged probe, a closed-form fit on standardized features, blind "
  "to their scale and to any step budget, at initialization and trained. An online head far above the "
  "control but not confirmed by probe trained > probe @ init reflects the features' scale and the head's "
  "budget, not example-specific content that training added."
)


@dataclasses.dataclass
class FigureSpec:
  """One figure of the report: its file, heading, one-line explanation and how to draw it."""

  filename: str
  heading: str
  explanation: str
  draw: Callable  # draw(axes) -> {series: (x, y)}
  ncols: int = 1
  width: float = 6.4
  height: float = 4.6

  def render(self):
    """``(figure, data)``: the figure drawn, still open (the caller saves or closes it)."""
    fig, axes = figures.new_figure(self.ncols, self.width, self.height)
    return fig, self.draw(axes)


def default_out(paths: Sequence[str]) -> str:
  """Where the report goes without ``--out``: see the module docstring.

  Never a filesystem root's ``report`` (``/report``): runs in different trees have no directory the user
  would look in.
  """
  dirs = [os.path.abspath(p) for p in paths]
  parents = {os.path.dirname(d) for d in dirs}
  if len(dirs) == 1:
    base = dirs[0]
  elif len(parents) == 1:
    base = parents.pop()
  else:
    raise UserError(
      f"--out: the runs are in different directories ({', '.join(sorted(parents))}); "
      "give --out=DIR for the report."
    )
  if os.path.dirname(base) == base:
    raise UserError(
      f"--out: the runs' directory is the filesystem root {base}; give --out=DIR for the report."
    )
  return os.path.join(base, "report")


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name)


def across_runs(runs: Sequence[RunLogs]) -> list[FigureSpec]:
  """The figures comparing several runs (none for one run)."""
  if len(runs) < 2:
    return []
  specs = []
  if LAMBDA in differing_keys(runs):
    specs += [
      FigureSpec(
        "lambda.png",
        "Figs. 4/5: final accuracies vs λ",
        "Each run's final random-label, train and test accuracy against its regularization strength λ "
        "(λ = 0 left of the axis break); one line per setting of the other swept keys.",
        lambda a: figures_across_runs.plot_lambda(a, runs),
        3,
        4.6,
        4.4,
      ),
      FigureSpec(
        "lambda_curves.png",
        "Figs. 4/5 over training, one line per run",
        "The same three accuracies at every epoch, one line per run, colored by λ.",
        lambda a: figures_across_runs.plot_lambda_curves(a, runs),
        3,
        4.6,
        4.4,
      ),
    ]
  specs.append(
    FigureSpec(
      "per_layer.png",
      "Figs. 8/9: final values per layer",
      "Each run's final accuracy per layer: the random-label head (left) and the class-label probes "
      "(middle, right); a gap means that layer has no head or probe.",
      lambda a: figures_across_runs.plot_per_layer(a, runs),
      3,
      4.6,
      4.6,
    )
  )
  return specs


def run_figures(run: RunLogs, prefix: str = "") -> list[FigureSpec]:
  """The figures of one run that its logs allow; file names start with ``prefix``."""
  if not run.metrics:
    return []
  specs = [
    FigureSpec(
      f"{prefix}accuracy.png",
      "Fig. 2A: accuracy vs epoch",
      "Class accuracy (train, test) and the random-label accuracy of the deepest head on training "
      "examples, per epoch; above the dotted chance line 1/n, the features carry example-specific "
      "information.",
      lambda a: figures.plot_accuracy(a, run),
    )
  ]
  if run.offline or run.controls:
    specs.append(
      FigureSpec(
        f"{prefix}online_offline.png",
        "Fig. 2B: online heads vs their controls",
        "Random-label accuracy of the head trained alongside the network (dashed) vs a fresh head trained "
        "on the frozen network with the same budget (solid; epoch 0 is the network at initialization, the "
        "paper's control) and the converged probe (dotted), blind to the features' scale and to any step "
        "budget. Only a lead the probe confirms is example-specific content that training added. "
        "`python -m rlp_jax.offline` adds every checkpoint; then rerun this report.",
        lambda a: figures.plot_online_offline(a, run),
      )
    )
  if len(run.layers()) > 1:
    specs += [
      FigureSpec(
        f"{prefix}layers.png",
        "Fig. 2C: random-label accuracy per layer",
        "Random-label accuracy of the head on each layer, per epoch, with chance 1/n.",
        lambda a: figures.plot_layers(a, run),
      ),
      FigureSpec(
        f"{prefix}layer_map.png",
        "Layer × epoch memorization map",
        "The same numbers as a map: one row per layer, one column per epoch; the darkest color is chance.",
        lambda a: figures.plot_layer_map(a, run),
        height=max(3.0, 0.45 * len(run.layers()) + 2.0),
      ),
    ]
  if run.layers("probe", "train_accuracy"):
    specs.append(
      FigureSpec(
        f"{prefix}probes.png",
        "Fig. 9: class probes per layer",
        "Class accuracy of a linear probe on each layer's (detached) features, train set left, test set "
        "right; the dashed black line is the network's own class head, the dotted grey one chance 1/classes.",
        lambda a: figures.plot_probes(a, run),
        2,
        5.4,
        4.8,
      )
    )
  return specs


def make_report(paths: Sequence[str], out: str | None = None, *, per_run: bool = True) -> dict:
  """Writes every figure the logs allow and ``report.md``; returns ``{figure file: plotted data}``."""
  runs = find_runs(paths)
  if not runs:
    raise UserError("--workdir: no runs found")
  out = out or default_out(paths)
  os.makedirs(out, exist_ok=True)
  keys = differing_keys(runs)
  drawn: dict[str, dict] = {}
  md = ["# RLP report", "", "Runs: " + ", ".join(f"`{p}`" for p in paths), ""]

  def add(specs: Sequence[FigureSpec]):
    for spec in specs:
      fig, data = spec.render()
      drawn[figures.save_figure(fig, os.path.join(out, spec.filename))] = data
      md.extend([f"### {spec.heading}", "", spec.explanation, "", f"![{spec.heading}]({spec.filename})", ""])

  md += _summary_table(runs, keys) + _skipped_lines(runs)
  if len(runs) > 1:
    md += ["## Across runs", ""]
    add(across_runs(runs))
  for run in runs if per_run or len(runs) == 1 else []:
    prefix = "" if len(runs) == 1 else f"{_slug(run.name)}__"
    md += [f"## Run {run.name}" + (f" ({run_label(run, keys)})" if keys else ""), "", f"`{run.workdir}`", ""]
    if not run.metrics:
      md += ["(no evaluations logged yet)", ""]
      continue
    add(run_figures(run, prefix))
    md += _memorization_section(run, out, prefix)
  rundir.atomic_write(os.path.join(out, "report.md"), "\n".join(md) + "\n")
  return drawn


def _skipped_lines(runs: Sequence[RunLogs]) -> list[str]:
  """The log lines that were not JSON (read_jsonl skipped them): the figures and the table lack them."""
  skipped = [message for r in runs for message in r.skipped]
  if not skipped:
    return []
  lines = [
    "## Log lines left out",
    "",
    f"{len(skipped)} line(s) could not be read; the figures lack them:",
    "",
  ]
  return lines + [f"- `{message}`" for message in skipped] + [""]


def _summary_table(runs: Sequence[RunLogs], keys: Sequence[str]) -> list[str]:
  layers = list(dict.fromkeys(lay for r in runs for lay in r.layers()))
  # The controls that decide how to read the online heads (docs/design.md §4), where the runs computed them.
  controls = [c for c in CONTROLS if any(c in r.controls.get(lay, {}) for r in runs for lay in layers)]
  cols = ["run", *keys, "epoch", "train acc.", "test acc.", "train − test"]
  cols += [f"random-label acc. {lay}" for lay in layers] + ["chance 1/n"]
  cols += [f"{CONTROL_NAMES[c]} {lay}" for lay in layers for c in controls]
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
      *[_num(r.controls.get(lay, {}).get(c)) for lay in layers for c in controls],
    ]
    lines.append("| " + " | ".join(cells) + " |")
  if any(not r.final for r in runs):
    lines += ["", "(Blank cells: that run has no record of its last epoch yet; it is unfinished.)"]
  if controls:
    lines += ["", CONTROLS_NOTE]
  return lines + [""]


def _num(v) -> str:
  return "" if v is None else f"{v:.4f}"


def _memorization_section(run: RunLogs, out: str, prefix: str) -> list[str]:
  mem = run.memorization
  if not mem:
    return []
  capacity = mem.get("capacity", {})
  level = next(iter(capacity.values()), {}).get("level", 0.95)  # one level for all: analyze's
  score = mem.get("score")
  lines = [
    "### Memorization scores and capacity",
    "",
    f"Per-example score: {SCORE_NAMES.get(score, score)} (`{score}`), from the `{mem.get('layer')}` heads "
    f"at step {mem.get('step')}.",
    "",
    f"| layer | capacity (chance-corrected) | {level:.0%} CI | random-label acc. | chance 1/n "
    "| label draws |",
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
  best = mem.get("noisy_vs_clean_best")
  if best:  # the best separating score: the RLP heads' or the class-loss baseline (docs/results.md)
    offline = best["score"].startswith("offline_")
    what = SCORE_NAMES.get(best["score"].removeprefix("offline_"), best["score"])
    if best["layer"]:
      what += f", `{best['layer']}` ({best['heads']}{', offline heads' if offline else ''})"
    lines += [
      f"Best noisy-vs-clean separation: {what} at step {best['step']}: ROC AUC {best['auc']:.4f} "
      f"[{best['ci_low']:.4f}, {best['ci_high']:.4f}] ({best['level']:.0%} CI)",
      "",
    ]
  if "external" in mem:
    lines += [
      f"Spearman correlation with the external score: {mem['external']['spearman']:.4f} "
      f"({mem['external']['num_examples']} examples)",
      "",
    ]
  grid = mem.get("image_grid")
  grid = grid if grid is None or os.path.isabs(grid) else os.path.join(run.workdir, grid)
  if grid and os.path.exists(grid):
    # Copied next to report.md, so that the page shows it wherever the report directory goes.
    name = prefix + os.path.basename(grid)
    copy = os.path.join(out, name)
    if not (os.path.exists(copy) and os.path.samefile(grid, copy)):
      shutil.copyfile(grid, copy)
    lines += [
      "The training examples the score ranks most and least memorized, per class:",
      "",
      f"![most / least memorized examples per class]({name})",
      "",
    ]
  return lines
