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
  """One row per (layer, head): online random-label accuracy, chance 1/n, and the offline heads at init.

  The offline heads at initialization are those of ``controls`` (offline_heads.init_controls: plain and, if
  run, scale-free).
  """
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


# The control columns: key in offline_heads.init_controls (and the loop's probe_trained), column title.
CONTROLS = {
  "offline_at_init": "offline @ init",
  "offline_at_init_scale_free": "offline @ init, scale-free",
  "probe_at_init": "probe @ init",
  "probe_trained": "probe trained",
}


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
  """Writes ``summary.json``: final metrics, the table's rows, and ``collapse``.

  ``collapse`` is health.collapse's finding: the epoch it was first seen, its message, whether it held at the
  end; null for a healthy run.
  """
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
    probed = [r for r in heads if r.get("probe_trained_accuracy") is not None]
    if probed:
      lines.append(
        "probe @ init / probe trained: the converged probe, a closed-form ridge fit of the random labels on "
        "standardized features, blind to their scale and to any step budget, on the initial and the final "
        "network."
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
      lines.append("this run: " + _verdict(best, name, online, init) + ".")
  log = "" if "://" in workdir else f" | full log: {rundir.log_path(workdir, 'train')}"
  lines.append(
    f"next: python -m rlp_jax.report --workdir={workdir} (figures) | python -m rlp_jax.offline "
    f"--workdir={workdir} (Fig. 2B) | tensorboard --logdir={workdir}{log}"
  )
  return "\n".join(lines)


def _verdict(row: Mapping, name: str, online: float, init: float) -> str:
  """The online head against its plain control, then what the scale-free controls say of that lead.

  Those controls are the converged probe (trained vs initial network) where it ran, else the LayerNorm head
  at init.
  """
  chance = row["chance"]
  lead = online > init + 2 * chance
  verdict = (
    f"{name} predicts {online / chance:.0f}x chance and {online / max(init, 1e-9):.1f}x the control"
    if lead
    else f"no head is clearly above its control (best: {name} {online:.4f} vs {init:.4f})"
  )
  probe_init, probe_trained = row.get("probe_at_init_accuracy"), row.get("probe_trained_accuracy")
  scale_free = row.get("offline_at_init_scale_free_accuracy")
  if probe_init is not None and probe_trained is not None:
    if min(probe_init, probe_trained) > 1 - 2 * chance:  # D + 1 >= M: the features shatter the set
      return verdict + (
        "; the converged probe fits every label from the initial and the trained features alike (they "
        "span the examples), so it cannot tell content from scale here"
      )
    if not lead:
      return verdict + (
        f"; the converged probe fits {probe_trained:.4f} of the labels from the trained features and "
        f"{probe_init:.4f} from the initial ones"
      )
    if probe_trained > probe_init + 2 * chance:
      return verdict + (
        f"; the converged probe agrees: it fits {probe_trained:.4f} of the labels from the trained features, "
        f"{probe_init:.4f} from the initial ones, whatever their scale and the head's budget"
      )
    return verdict + (
      f"; but the converged probe fits {probe_trained:.4f} from the trained features and {probe_init:.4f} "
      "from "
      "the initial ones: the lead over the plain control is the features' scale and the head's step "
      "budget, not example-specific content training added (docs/design.md §4)"
    )
  if lead and scale_free is not None and online <= scale_free + 2 * chance:
    return verdict + (
      f"; but a scale-free head fits the initial features to {scale_free:.4f} "
      f"({scale_free / max(online, 1e-9):.1f}x {name}): a lead over the plain control can be the "
      "features' growth in norm during training, not content the initial features lack (docs/design.md §4)"
    )
  if lead:
    return verdict + ": the trained features carry example-specific information the initial ones do not"
  return verdict
