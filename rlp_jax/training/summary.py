"""The end-of-run table: class accuracy; per RLP head its accuracy, chance and the offline control."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from rlp_jax.infra import rundir


def rows(
  metrics: Mapping[str, float], controls: Mapping[str, Mapping[str, np.ndarray]], num_labels: int, layers
) -> list[dict]:
  """One row per (layer, head): online random-label accuracy, chance 1/n, and the offline heads at
  initialization of ``controls`` (offline_heads.init_controls: plain and, if run, scale-free)."""
  out = []
  for layer in layers:
    heads = [k for k in metrics if k.startswith(f"rlp/{layer}/head_") and k.endswith("/accuracy")]
    online = [metrics[k] for k in sorted(heads, key=lambda k: int(k.split("head_")[1].split("/")[0]))]
    online = online or [metrics[f"rlp/{layer}/accuracy"]]
    for j, acc in enumerate(online):
      row = {"layer": layer, "head": j, "online_accuracy": float(acc), "chance": 1.0 / num_labels}
      for name in CONTROLS:
        control = controls.get(name, {}).get(layer)
        row[f"{name}_accuracy"] = None if control is None else float(control[j])
      out.append(row)
  return out


# The control columns: key in offline_heads.init_controls, column title.
CONTROLS = {"offline_at_init": "offline @ init", "offline_at_init_scale_free": "offline @ init, scale-free"}


def format_table(metrics: Mapping[str, float], head_rows: list[dict]) -> str:
  lines = [
    f"epoch {int(metrics.get('epoch', 0))}: class accuracy  train {metrics['train/accuracy']:.4f}"
    f"  test {metrics['test/accuracy']:.4f}"
  ]
  if head_rows:
    # A control column only if some head has it (the scale-free one is optional).
    shown = {k: t for k, t in CONTROLS.items() if any(r.get(f"{k}_accuracy") is not None for r in head_rows)}
    shown = shown or {"offline_at_init": CONTROLS["offline_at_init"]}
    widths = {k: max(16, len(t) + 2) for k, t in shown.items()}
    lines.append(
      f"{'RLP head':<22}{'random-label acc':>18}{'chance (1/n)':>14}"
      + "".join(f"{t:>{widths[k]}}" for k, t in shown.items())
    )
    for r in head_rows:
      cells = ["-" if r.get(f"{k}_accuracy") is None else f"{r[f'{k}_accuracy']:.4f}" for k in shown]
      lines.append(
        f"{r['layer'] + '/head_' + str(r['head']):<22}{r['online_accuracy']:>18.4f}{r['chance']:>14.4f}"
        + "".join(f"{c:>{widths[k]}}" for c, k in zip(cells, shown, strict=True))
      )
  return "\n".join(lines)


def write(workdir: str, metrics: Mapping[str, float], head_rows: list[dict], collapse: Mapping | None = None):
  """``summary.json``: final metrics, the table's rows, and ``collapse`` (health.collapse's finding: the
  epoch it was first seen, its message, whether it held at the end; null for a healthy run)."""
  record = {"final_metrics": dict(metrics), "rlp_heads": head_rows, "collapse": collapse}
  rundir.atomic_write(os.path.join(workdir, rundir.SUMMARY_FILE), json.dumps(record, indent=2))


def explain(workdir: str, result: Mapping, label_mode: str = "fixed") -> str:
  """A few lines under the table: what its columns are, what this run's numbers say, what to run next."""
  lines = []
  collapse = result.get("collapse")
  if collapse:
    lines.append(
      "WARNING: "
      + collapse["message"]
      + (
        "" if collapse.get("at_end", True) else f" (seen at epoch {collapse['epoch']}; recovered by the end)"
      )
    )
  heads = result.get("rlp_heads") or []
  if heads:
    lines += [
      "random-label acc: share of its fixed random labels a head predicts on training examples "
      "(memorization; chance = 1/n).",
      "offline @ init: a fresh head, same labels and budget, trained on the frozen network at "
      "initialization (the control: what untrained features allow).",
    ]
    scale_free = [r for r in heads if r.get("offline_at_init_scale_free_accuracy") is not None]
    if scale_free:
      lines.append(
        "offline @ init, scale-free: the same with a LayerNorm before the dense layer, blind to the "
        "features' norm (which grows during training): what the initial features allow whatever their scale."
      )
    controlled = [r for r in heads if r["offline_at_init_accuracy"] is not None]
    if label_mode == "shuffled":
      # The online metric is scored on a held-out draw (docs/design.md §4), the control on epoch 0's labels.
      controlled = []
      lines.append(
        "this run: shuffled labels (A.2): random-label accuracy is scored on a label draw no epoch trained "
        "on and should sit at chance; it is not compared with the control."
      )
    if controlled:
      # Against the control of its own variant (same head, same budget); then the scale-free one.
      best = max(controlled, key=lambda r: r["online_accuracy"] - r["offline_at_init_accuracy"])
      name, online, init = (
        f"{best['layer']}/head_{best['head']}",
        best["online_accuracy"],
        best["offline_at_init_accuracy"],
      )
      scale_free = best.get("offline_at_init_scale_free_accuracy")
      # A scale-free head that fits the initial features as well: the lead may be the features' norm.
      lead = online > init + 2 * best["chance"]
      by_scale = lead and scale_free is not None and online <= scale_free + 2 * best["chance"]
      if lead:
        ratio = online / max(init, 1e-9)
        verdict = f"{name} predicts {online / best['chance']:.0f}x chance and {ratio:.1f}x the control"
        if not by_scale:
          verdict += ": the trained features carry example-specific information the initial ones do not"
      else:
        verdict = f"no head is clearly above its control (best: {name} {online:.4f} vs {init:.4f})"
      if by_scale:
        verdict += (
          f"; but a scale-free head fits the initial features to {scale_free:.4f} "
          f"({scale_free / max(online, 1e-9):.1f}x {name}): a lead over the plain control can be the "
          "features' growth in norm during training, not content the initial features lack "
          "(docs/design.md §4)"
        )
      lines.append("this run: " + verdict + ".")
  log = "" if "://" in workdir else f" | full log: {rundir.log_path(workdir, 'train')}"
  lines.append(
    f"next: python -m rlp_jax.report --workdir={workdir} (figures) | python -m rlp_jax.offline "
    f"--workdir={workdir} (Fig. 2B) | tensorboard --logdir={workdir}{log}"
  )
  return "\n".join(lines)
