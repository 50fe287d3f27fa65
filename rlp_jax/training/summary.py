"""The end-of-run table: class accuracy; per RLP head its accuracy, chance and the offline control."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from rlp_jax.infra import rundir


def rows(
  metrics: Mapping[str, float], offline_at_init: Mapping[str, np.ndarray], num_labels: int, layers
) -> list[dict]:
  """One row per (layer, head): online random-label accuracy, chance 1/n, offline head at initialization."""
  out = []
  for layer in layers:
    heads = [k for k in metrics if k.startswith(f"rlp/{layer}/head_") and k.endswith("/accuracy")]
    online = [metrics[k] for k in sorted(heads, key=lambda k: int(k.split("head_")[1].split("/")[0]))]
    online = online or [metrics[f"rlp/{layer}/accuracy"]]
    offline = offline_at_init.get(layer)
    for j, acc in enumerate(online):
      out.append(
        {
          "layer": layer,
          "head": j,
          "online_accuracy": float(acc),
          "chance": 1.0 / num_labels,
          "offline_at_init_accuracy": None if offline is None else float(offline[j]),
        }
      )
  return out


def format_table(metrics: Mapping[str, float], head_rows: list[dict]) -> str:
  lines = [
    f"epoch {int(metrics.get('epoch', 0))}: class accuracy  train {metrics['train/accuracy']:.4f}"
    f"  test {metrics['test/accuracy']:.4f}"
  ]
  if head_rows:
    lines.append(f"{'RLP head':<22}{'random-label acc':>18}{'chance (1/n)':>14}{'offline @ init':>16}")
    for r in head_rows:
      off = "-" if r["offline_at_init_accuracy"] is None else f"{r['offline_at_init_accuracy']:.4f}"
      lines.append(
        f"{r['layer'] + '/head_' + str(r['head']):<22}{r['online_accuracy']:>18.4f}"
        f"{r['chance']:>14.4f}{off:>16}"
      )
  return "\n".join(lines)


def write(workdir: str, metrics: Mapping[str, float], head_rows: list[dict]) -> None:
  record = {"final_metrics": dict(metrics), "rlp_heads": head_rows}
  rundir.atomic_write(os.path.join(workdir, rundir.SUMMARY_FILE), json.dumps(record, indent=2))


def explain(workdir: str, result: Mapping) -> str:
  """A few lines under the table: what its columns are, what this run's numbers say, what to run next."""
  lines = []
  heads = result.get("rlp_heads") or []
  if heads:
    lines += [
      "random-label acc: share of its fixed random labels a head predicts on training examples "
      "(memorization; chance = 1/n).",
      "offline @ init: a fresh head, same labels and budget, trained on the frozen network at "
      "initialization (the control: what untrained features allow).",
    ]
    controlled = [r for r in heads if r["offline_at_init_accuracy"] is not None]
    if controlled:
      best = max(controlled, key=lambda r: r["online_accuracy"] - r["offline_at_init_accuracy"])
      name, online, init = (
        f"{best['layer']}/head_{best['head']}",
        best["online_accuracy"],
        best["offline_at_init_accuracy"],
      )
      if online > init + 2 * best["chance"]:
        verdict = (
          f"{name} predicts {online / best['chance']:.0f}x chance and "
          f"{online / max(init, 1e-9):.1f}x the control: "
          "the trained features carry example-specific information the initial ones do not."
        )
      else:
        verdict = f"no head is clearly above its control (best: {name} {online:.4f} vs {init:.4f})."
      lines.append("this run: " + verdict)
  lines.append(
    f"next: python -m rlp_jax.report --workdir={workdir} (figures) | python -m rlp_jax.offline "
    f"--workdir={workdir} (Fig. 2B) | tensorboard --logdir={workdir} | full log: "
    f"{rundir.log_path(workdir, 'train')}"
  )
  return "\n".join(lines)
