r"""The accelerator suite: every number issue 14 asks for, side by side in one process, as one table.

  python -m rlp_jax.benchmark --suite=accelerator [--scale=S] [--json=PATH]

Two kinds of rows (docs/design.md §5):

* Train steps of ViT-B/32 (configs/vit_imagenet.py on synthetic data, batch 1024, bf16): heads off, the
  paper's n = 100,000 head, and one label per example (n = m = 1,281,167) with label chunks, with full
  logits and with the Pallas kernel; each RLP row at λ = 0 and λ > 0. Ratio: step time / heads off.
* The head loss alone at the unique head's shape (B = 1024, D = 768, n = 1,281,167): plain autodiff of
  optax's CE + log(1 - p_y) (what a user would write), ours with full logits, with label chunks and with
  the Pallas kernel, and tokamax's ``linear_softmax_cross_entropy_loss`` (CE only: λ = 0). Value and
  gradients, timed; ratio: time / autodiff; numerics: the largest absolute difference of the loss and
  every gradient from ours (full logits) and from autodiff.

MFU divides FLOPs counted in the traced program (flops.py; for the head-loss rows, ours with full logits:
the same useful work for every implementation) by the device's dense bf16 peak (benchmark.PEAK_FLOPS).
Memory: the compiled program's (arguments + outputs + temporaries for steps, temporaries for the head
loss); "peak GB" is the device's own high-water mark (memory_stats, GPU) after the row, over the process.

On a CPU the suite runs scaled-down shapes (a 2-block ViT of width 64, B = 256, D = 768, n = 65,536·scale
for the head loss) in well under a minute; what needs an accelerator (MFU, the Pallas kernel's time, which
runs in Pallas's interpreter there) reads "not measured", and ``remaining`` says what is left to run.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import jax

from rlp_jax.infra import config_args
from rlp_jax.infra.errors import UserError
from rlp_jax.perf import benchmark
from rlp_jax.perf.head_loss_rows import LAMBDA, NOT_MEASURED, head_rows, peak_memory

M_IMAGENET = 1_281_167


@dataclasses.dataclass(frozen=True)
class Shapes:
  accelerator: bool
  batch: int  # train steps' global batch
  model: dict  # overrides of configs/vit_imagenet.py's model (empty: ViT-B/32)
  n: int  # the fixed-label head's labels
  m: int  # examples = labels of the unique head
  chunk: int  # its label chunk
  head: tuple[int, int, int]  # the head-loss rows' (B, D, n)
  head_chunk: int
  dtype: str
  steps: int  # timed steps (or head-loss calls) per repeat


def shapes(accelerator: bool, scale: float) -> Shapes:
  """The real shapes on an accelerator (scale 1); on a CPU, shapes that run in seconds."""
  if accelerator:
    n, m = round(100_000 * scale), round(M_IMAGENET * scale)
    return Shapes(True, 1024, {}, n, m, 32_768, (1024, 768, m), 32_768, "bfloat16", 10)
  n, m, head_n = (max(64, round(base * scale)) for base in (4096, 16_384, 65_536))
  # float32: XLA:CPU emulates bf16 matmuls slowly (label_axis.matmul_dtype computes heads in float32 there).
  tiny_vit = dict(width=32, depth=1, num_heads=2, patch_size=32, dtype="float32")
  return Shapes(
    False, 32, tiny_vit, n, m, max(8, m // 8), (256, 768, head_n), max(8, head_n // 8), "float32", 2
  )


# ----------------------------------------------------------------------------------------------------
# Train steps
# ----------------------------------------------------------------------------------------------------


def vit_config_path() -> Path:
  """The repository's configs/vit_imagenet.py, found from the package's own place (not the working directory).

  configs/ is not installed with the package, so the suite needs a checkout.
  """
  path = Path(__file__).resolve().parents[2] / "configs" / "vit_imagenet.py"
  if not path.is_file():
    raise UserError(
      f"{path}: no such config file; run --suite=accelerator from a checkout of the repository (configs/ is "
      "not part of the installed package)."
    )
  return path


def step_configs(sh: Shapes):
  """(row name, λ, config) of every train-step row; the first is heads off."""
  base = config_args.from_file(str(vit_config_path()))
  base.batch_size = sh.batch
  base.model.update(**sh.model)
  base.rlp.dtype = sh.dtype
  off = copy.deepcopy(base)
  off.rlp.update(num_heads=0, reg_lambda=0.0)
  rows = [("ViT-B/32 heads off" if sh.accelerator else "tiny ViT heads off", 0.0, off)]
  variants = (
    (f"n = {sh.n:,}", dict(num_labels=sh.n)),
    (f"unique n = {sh.m:,}, chunk {sh.chunk:,}", dict(label_mode="unique", label_chunk=sh.chunk)),
    (f"unique n = {sh.m:,}, full logits", dict(label_mode="unique", label_chunk=0)),
    (f"unique n = {sh.m:,}, pallas", dict(label_mode="unique", label_chunk=0, loss_kernel="pallas")),
  )
  for name, rlp in variants:
    for lam in (0.0, LAMBDA):
      cfg = copy.deepcopy(base)
      cfg.rlp.update(reg_lambda=lam, **rlp)
      rows.append((name, lam, cfg))
  return rows


def step_row(name, lam, cfg, sh: Shapes) -> dict[str, Any]:
  row = dict(kind="step", row=name, lam=lam, shape=f"batch {cfg.batch_size}, {cfg.model.dtype}")
  if cfg.rlp.get("loss_kernel") == "pallas" and not sh.accelerator:
    return dict(row, note=f"{NOT_MEASURED}: Pallas runs interpreted on CPU (head-loss row: its numerics)")
  info = benchmark.data_info(cfg)
  # m examples (the unique head's n): imagenet2012's shapes with the scaled count.
  info = dataclasses.replace(info, num_train=sh.m, num_selected=sh.m)
  r = benchmark.measure(cfg, info, steps=sh.steps, warmup=1, repeats=2)
  return dict(
    row,
    time_s=r["step_s"],
    flops=r["model_flops_per_step"],
    mfu=r.get("mfu"),
    memory_bytes=r.get("device_memory_bytes"),
  )


# ----------------------------------------------------------------------------------------------------
# The suite
# ----------------------------------------------------------------------------------------------------


def load_tokamax():
  """tokamax if installed (requirements.txt pins 0.0.12 for the CPU set; a GPU image may lack it)."""
  try:
    import tokamax
  except ImportError:
    return None
  return tokamax


def run(scale: float = 0.0) -> dict[str, Any]:
  """Every row in one process; ``scale`` 0 means 1 on an accelerator and 0.125 on a CPU."""
  t0 = time.perf_counter()
  accelerator = jax.default_backend() != "cpu"
  scale = scale or (1.0 if accelerator else 0.125)
  sh = shapes(accelerator, scale)
  rows = []
  for name, lam, cfg in step_configs(sh):
    try:
      rows.append(step_row(name, lam, cfg, sh))
    except Exception as e:  # one row that does not fit or lower must not cost the rest of the table
      rows.append(dict(kind="step", row=name, lam=lam, note=f"failed: {type(e).__name__}: {str(e)[:120]}"))
    rows[-1].update(peak_memory())
  off = rows[0].get("time_s")
  for r in rows:
    if off and "time_s" in r:
      r["ratio"] = r["time_s"] / off
  tokamax = load_tokamax()
  rows += head_rows(sh, tokamax)
  dev = jax.devices()[0]
  return dict(
    device=f"{jax.device_count()} x {getattr(dev, 'device_kind', dev.platform)}",
    platform=dev.platform,
    jax=jax.__version__,
    tokamax=getattr(tokamax, "__version__", "installed") if tokamax else None,
    scale=scale,
    shapes=dataclasses.asdict(sh),
    wall_s=time.perf_counter() - t0,
    rows=rows,
    remaining=remaining(accelerator, rows),
  )


def remaining(accelerator: bool, rows) -> list[str]:
  """What this run could not measure, and the command that measures it."""
  failed = [
    f"{r['row']} (λ = {r['lam']:g}): {r['note']}" for r in rows if r.get("note", "").startswith("failed")
  ]
  if accelerator:
    return [f"rerun after fixing: {f}" for f in failed]
  return [
    "On one GPU: `python -m rlp_jax.benchmark --suite=accelerator` (launch/device_wheels.sh first if tfds, "
    "ml_collections or clu are missing): the real shapes (ViT-B/32, batch 1024, bf16; n = 100,000; "
    "n = m = 1,281,167 chunked, full and Pallas; the head loss at B 1024, D 768, n 1,281,167), step-time "
    "ratios, MFU and peak memory, and the Pallas kernel's time.",
    "tokamax side by side on the GPU: its 0.0.17 wheel needs Python >= 3.12 and jax >= 0.11.1 (the GPU "
    "image's); this table used the installed version's XLA implementation.",
    "Targets to check there: unique <= 1.30x heads off at λ = 0 and λ > 0; heads off >= 45% MFU; "
    "n = 100,000 <= 1.05x at λ > 0.",
  ] + failed


_COLUMNS = (  # header, key, format, scale
  ("time ms", "time_s", ".2f", 1e3),
  ("ratio", "ratio", ".3f", 1),
  ("MFU %", "mfu", ".1f", 100),
  ("memory GB", "memory_bytes", ".3f", 1e-9),
  ("peak GB", "peak_bytes", ".2f", 1e-9),
  ("max abs Δ vs ours", "diff_ours", ".2e", 1),
  ("max abs Δ vs autodiff", "diff_autodiff", ".2e", 1),
)


def format_table(result) -> str:
  """One Markdown table: ratio is step time / heads off for steps, time / autodiff for the head loss."""
  accelerator = result["platform"] != "cpu"
  lines = [
    f"Accelerator suite on {result['device']}, JAX {result['jax']}, tokamax {result['tokamax'] or 'absent'}, "
    f"scale {result['scale']:g}, {result['wall_s']:.0f} s. Ratio: steps / heads off; head loss / autodiff.",
    "",
    "| row | λ | shape | " + " | ".join(h for h, *_ in _COLUMNS) + " | note |",
    "|---|---|---|" + "---:|" * len(_COLUMNS) + "---|",
  ]
  for r in result["rows"]:
    cells = []
    for _, key, spec, scale in _COLUMNS:
      if r.get(key) is not None:
        cells.append(format(scale * r[key], spec))
      elif key == "mfu" and "time_s" in r and not accelerator:
        cells.append(NOT_MEASURED)  # no peak FLOP/s for a CPU
      else:
        cells.append("")
    kind = "step" if r["kind"] == "step" else "head loss"
    lines.append(
      f"| {kind}: {r['row']} | {r['lam']:g} | {r.get('shape', '')} | "
      + " | ".join(cells)
      + f" | {r.get('note', '')} |"
    )
  if result["remaining"]:
    lines += ["", "Remaining:"] + [f"- {x}" for x in result["remaining"]]
  return "\n".join(lines)
