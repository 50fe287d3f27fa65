"""JAX's persistent compilation cache for runs (docs/design.md §5): a resumed or repeated run skips compiling.

``enable(config.compilation_cache_dir)`` is called by ``experiment.build``, which every compiling path goes
through (training, benchmark, plan, the analysis tools). The cache is keyed by XLA on the program, the
backend and the compiler flags, so a hit is the same executable; it never changes a result, and the key is
not part of a run's identity (``configuration.RESUMABLE_KEYS``). Off with ``''``, and off with one warning
where the directory cannot be created or written (a read-only home, a full disk).
"""

from __future__ import annotations

import os
import tempfile
import warnings

import jax

# Compiles shorter than this are not written: the digits step compiles in ~1 s on CPU, a ViT-B/32 step in
# tens of seconds; smaller entries would only churn the disk.
MIN_COMPILE_SECONDS = 0.5

_enabled: str | None = None


def enable(path: str) -> str | None:
  """Points JAX's persistent cache at ``path`` (``~`` expanded); returns the directory used, or None."""
  global _enabled
  if not path:
    return None
  path = os.path.abspath(os.path.expanduser(path))
  if _enabled == path:
    return path
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path):  # writable, not only present
      pass
  except OSError as e:
    warnings.warn(
      f"config.compilation_cache_dir={path!r}: not usable ({e.strerror}); compiling without a cache. "
      "Set it to a writable directory, or '' to turn it off.",
      stacklevel=2,
    )
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  _enabled = path
  return path
