"""The accelerator suite's head-loss rows: the head loss alone, ours against plain autodiff and tokamax.

Value and gradients of one output layer's routed loss at the unique head's shape, timed, with the FLOPs
counted on ours (full logits) and the largest difference from ours and from autodiff (accelerator_suite's
docstring describes the table; docs/design.md §5).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlp_jax.heads import label_axis, routing
from rlp_jax.perf import benchmark, flops

NOT_MEASURED = "not measured"
LAMBDA = 1.0  # λ of the λ > 0 rows (its value does not change the work)


def _autodiff(x, w, b, y, lam, *, num_valid, dtype):
  """Plain autodiff of optax's CE and log(1 - p_y) over full logits, each through routing's input set."""

  def logits(x, w, b):
    return label_axis.mask_padding(label_axis.dense(x, w, b, dtype), num_valid)

  rnd, reg = routing.route_inputs(x, w, b)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits(*rnd), y).mean()
  if lam:
    s = logits(*reg)
    others = jnp.where(jax.nn.one_hot(y, s.shape[-1], dtype=bool), -jnp.inf, s)
    loss = loss - lam * (jax.nn.logsumexp(others, -1) - jax.nn.logsumexp(s, -1)).mean()
  return loss


def _ours(x, w, b, y, lam, *, num_valid, dtype, label_chunk=0, loss_kernel="xla"):
  return routing.routed_head_loss(
    x, w, b, y, lam, num_valid=num_valid, dtype=dtype, label_chunk=label_chunk, loss_kernel=loss_kernel
  )


def _tokamax(tokamax, x, w, b, y, *, num_valid, dtype):
  """tokamax's loss: CE only, no bias, no padding: the valid labels' kernel in the matmul dtype."""
  dt = label_axis.matmul_dtype(dtype)
  (x, _, _), _ = routing.route_inputs(x, w, b)  # L_rnd's route: the head moves, x does not
  return tokamax.linear_softmax_cross_entropy_loss(
    x.astype(dt), y[:, 0], w[0, :, :num_valid].astype(dt), reduction="mean", implementation="xla"
  )


def _timed(fn, args, steps):
  """(best mean seconds per call over 2 repeats, compiled) for a jitted value-and-grad."""
  compiled = fn.lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  means = []
  for _ in range(2):
    t0 = time.perf_counter()
    for _ in range(steps):
      out = compiled(*args)
    jax.block_until_ready(out)
    means.append((time.perf_counter() - t0) / steps)
  return min(means), compiled


def _problem(b, d, n, chunk, seed=0):
  """x (B, D), one head's kernel (1, D, n padded to whole chunks), zero bias, labels (B, 1) in [0, n)."""
  n_pad = -(-n // chunk) * chunk
  kx, kw, ky = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (b, d))
  w = jax.random.normal(kw, (1, d, n_pad)) / np.sqrt(d)
  return x, w, jnp.zeros((1, n_pad)), jax.random.randint(ky, (b, 1), 0, n)


def _max_diff(a, b):
  """Largest absolute difference over the loss and the gradients (tokamax's dW: the valid labels)."""
  (la, ga), (lb, gb) = a, b
  out = abs(float(la) - float(lb))
  for u, v in zip(ga, gb):
    if u is None or v is None:
      continue
    k = min(u.shape[-1], v.shape[-1])
    out = max(out, float(jnp.abs(u[..., :k].astype(jnp.float32) - v[..., :k].astype(jnp.float32)).max()))
  return out


@dataclasses.dataclass(frozen=True)
class _Impl:
  """One head-loss row: its name, ``make(λ)`` and whether it is a reference.

  ``make(λ)`` -> a loss of (x, w, b) (None: tokamax's, made in the loop). A reference is 'autodiff' (time
  ratios, diff_autodiff) or 'ours' (FLOPs, diff_ours).
  """

  name: str
  make: Callable[[float], Callable] | None
  reference: str = ""


def head_rows(sh, tokamax=None) -> list[dict[str, Any]]:
  """Every head-loss row at λ = 0 and λ > 0 on one problem, then the Pallas kernel's numerics on a CPU.

  ``sh`` is accelerator_suite.Shapes; on a CPU the kernel runs interpreted at a tiny shape (numerics only).
  """
  b, d, n = sh.head
  x, w, bias, y = _problem(b, d, n, sh.head_chunk)
  kw = dict(num_valid=n, dtype=sh.dtype)
  shape = f"B {b}, D {d}, n {n:,}, {sh.dtype}"
  impls = [
    _Impl("autodiff (optax CE + log1m)", lambda lam: lambda *a: _autodiff(*a, y, lam, **kw), "autodiff"),
    _Impl("ours, full logits", lambda lam: lambda *a: _ours(*a, y, lam, **kw), "ours"),
    _Impl(
      f"ours, chunk {sh.head_chunk:,}",
      lambda lam: lambda *a: _ours(*a, y, lam, label_chunk=sh.head_chunk, **kw),
    ),
  ]
  if sh.accelerator:
    impls.append(_Impl("ours, pallas", lambda lam: lambda *a: _ours(*a, y, lam, loss_kernel="pallas", **kw)))
  impls.append(_Impl("tokamax 0.0.x, xla", None))
  ref = {impl.reference: impl for impl in impls if impl.reference}
  rows = []
  peak = benchmark.peak_flops(jax.devices()[0])
  for lam in (0.0, LAMBDA):
    useful = flops.count(jax.value_and_grad(ref["ours"].make(lam), argnums=(0, 1, 2)), x, w, bias)
    results, this = {}, []
    for impl in impls:
      row = dict(kind="head", row=impl.name, lam=lam, shape=shape)
      this.append(row)
      if impl.make is None:  # tokamax
        if tokamax is None:
          row["note"] = "tokamax not installed"
          continue
        row["row"] = f"tokamax {getattr(tokamax, '__version__', '')}, xla"
        if lam:
          row["note"] = "not applicable: CE only (no log1m, no bias)"
          continue
        fn = jax.jit(jax.value_and_grad(lambda x, w, b: _tokamax(tokamax, x, w, b, y, **kw), argnums=(0, 1)))
      else:
        fn = jax.jit(jax.value_and_grad(impl.make(lam), argnums=(0, 1, 2)))
      try:
        seconds, compiled = _timed(fn, (x, w, bias), sh.steps)
      except Exception as e:  # a kernel that does not lower here must not cost the rest of the table
        row["note"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        continue
      results[row["row"]] = compiled(x, w, bias)
      mem = compiled.memory_analysis()
      row.update(time_s=seconds, flops=useful, memory_bytes=getattr(mem, "temp_size_in_bytes", None))
      row["mfu"] = useful / seconds / peak if peak else None
      row.update(peak_memory())
    ours, auto = results.get(ref["ours"].name), results.get(ref["autodiff"].name)
    base = next(row for row in this if row["row"] == ref["autodiff"].name)
    for row in this:
      if "time_s" in row and "time_s" in base:
        row["ratio"] = row["time_s"] / base["time_s"]
      if row["row"] in results:
        row["diff_ours"] = _max_diff(results[row["row"]], ours) if ours is not None else None
        row["diff_autodiff"] = _max_diff(results[row["row"]], auto) if auto is not None else None
    rows.extend(this)
  if not sh.accelerator:
    rows.extend(_pallas_correctness_rows())
  return rows


def _pallas_correctness_rows():
  """The Pallas kernel in Pallas's interpreter at a tiny shape: numerics only (its time says nothing)."""
  b, d, n = 8, 16, 64
  x, w, bias, y = _problem(b, d, n, 1)
  kw = dict(num_valid=n, dtype="float32")
  rows = []
  for lam in (0.0, LAMBDA):
    out = {}
    for kernel in ("xla", "pallas"):
      loss = functools.partial(_ours, y=y, lam=lam, loss_kernel=kernel, **kw)
      out[kernel] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, w, bias)
    auto = jax.jit(jax.value_and_grad(lambda *a: _autodiff(*a, y, lam, **kw), argnums=(0, 1, 2)))(x, w, bias)
    rows.append(
      dict(
        kind="head",
        row="ours, pallas (interpreted)",
        lam=lam,
        shape=f"B {b}, D {d}, n {n}, float32",
        diff_ours=_max_diff(out["pallas"], out["xla"]),
        diff_autodiff=_max_diff(out["pallas"], auto),
        note=f"time {NOT_MEASURED}: needs a GPU (Triton)",
      )
    )
  return rows


def peak_memory() -> dict[str, float]:
  stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
  return {"peak_bytes": float(stats["peak_bytes_in_use"])} if stats and "peak_bytes_in_use" in stats else {}
