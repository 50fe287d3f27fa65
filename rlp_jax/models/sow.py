"""How a model exposes an activation to the RLP heads: ``sow_intermediate(self, name, x)``."""

from __future__ import annotations

import jax
from flax import nnx


def sow_intermediate(module: nnx.Module, name: str, value: jax.Array) -> None:
  """Sow ``value`` as ``nnx.Intermediate`` ``name``, but only under ``nnx.capture``.

  Why the guard: outside ``nnx.capture``, flax 0.12's ``Module.sow`` stores the value as a new
  ``Intermediate`` attribute on the module (and warns that this is deprecated). A plain forward pass would
  then grow the model's state with an ever-longer tuple of activations, and ``nnx.split(model, nnx.Param,
  nnx.BatchStat)`` would fail on the non-exhaustive remainder. ``nnx.capture`` marks every submodule with
  ``__captures__`` while it runs, and ``Module.sow`` itself dispatches on that attribute; flax 0.12 has no
  public predicate for it, so this reads the same marker (tests/test_models.py pins both behaviours: a
  plain call leaves the state pure, a captured call returns every sown layer).
  """
  if hasattr(module, "__captures__"):
    module.sow(nnx.Intermediate, name, value)
