"""A reproduction config's experiments (configs/paper_<dataset>.py): each a ``Study`` of one axis.

A study varies one config key (``axis``) over ``values``, at each λ in ``lambdas``, over ``seeds``, with
``fixed`` overrides held beside it; every other key is the config's own. ``points`` turns studies into the
sweep's points (analysis/sweep.py runs them), the same point named once however many studies share it, so
that the base run of one study is the λ = 0 run of another. analysis/paper_results.py reads the studies
back to pool each one's runs over seeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from rlp_jax.infra import config_args
from rlp_jax.infra.errors import UserError

LAMBDA = "rlp.reg_lambda"
SEED = "seed"


@dataclasses.dataclass(frozen=True)
class Study:
  """One figure of the paper as a grid: ``axis`` × ``lambdas`` × ``seeds``, with ``fixed`` beside it."""

  name: str  # a file-name-safe id: its figure is out/<name>.png
  title: str  # the paper's figure and what it asks
  axis: str  # the config key varied (LAMBDA for a λ sweep)
  values: tuple
  lambdas: tuple = (0.0,)
  seeds: tuple = (0, 1, 2)
  fixed: tuple[tuple[str, Any], ...] = ()  # (key, value) pairs held at these values in every run

  def __post_init__(self):
    if self.axis in dict(self.fixed):
      raise UserError(f"study {self.name!r}: its axis {self.axis!r} is also among its fixed keys.")
    if self.axis == LAMBDA and self.lambdas != (0.0,):
      raise UserError(f"study {self.name!r}: a λ study takes its λs as values, not as lambdas.")


def grid(config, study: Study) -> list[tuple[Any, float, int, dict[str, Any]]]:
  """``(value, λ, seed, point)`` of every run of the study.

  A key at the config's own value is left out of the point (λ and the seed always stay in).
  """
  out = []
  for value in study.values:
    # A λ study's values are its λs; any other study runs each value at each of ``lambdas``.
    for lam in (value,) if study.axis == LAMBDA else study.lambdas:
      for seed in study.seeds:
        # Keys in one order (sorted, then λ and the seed) whichever study names the point, so that a run
        # two studies share has one name.
        varied = {
          k: v for k, v in {study.axis: value, **dict(study.fixed)}.items() if k not in (LAMBDA, SEED)
        }
        kept = {k: varied[k] for k in sorted(varied) if varied[k] != config_args.lookup(config, k, "study")}
        out.append((value, lam, seed, {**kept, LAMBDA: lam, SEED: seed}))
  return out


def points(config, studies: Sequence[Study]) -> list[dict[str, Any]]:
  """Every study's points, each distinct point once, in the studies' order.

  Points are built in one key order (``grid``), so equal points are also equal run names.
  """
  out: list[dict[str, Any]] = []
  for study in studies:
    out += [p for *_, p in grid(config, study) if p not in out]
  return out
