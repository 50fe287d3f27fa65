"""The one place a model is added: its name, its class, its own config keys, what validation allows it.

Every part of the package that treats models differently asks this table: ``models.create_model`` (the
class and which ``config.model`` keys it takes), ``configuration.base_config`` (the keys' defaults, so
``--config.model.KEY`` works), ``configuration.validate`` and ``configuration.feature_pool`` (what the model
allows), and ``rundir.migrate`` (what a run saved before a key existed meant). The class is named by its
import path, so this module stands below the models it lists (docs/design.md §6); ``register`` also takes
the class itself, for a model defined in one's own code (README "Add a model").
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from rlp_jax.infra.errors import UserError


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A model as the rest of the package sees it.

  The class is built as ``cls(input_shape, num_classes, *, width, depth, dropout, rngs, **own_keys)`` and
  called as ``model(x, *, train, rngs)``; it sows ``sows`` (each with models.sow_intermediate), the features
  its class head reads as ``pre_logits``.
  """

  name: str
  cls: str | Callable[..., Any]  # 'package.module:Class', or the class itself
  sows: str  # the names it sows, as the docs and errors list them
  own_keys: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # config.model keys -> defaults
  size_from_variant: bool = False  # width or depth 0 means the variant's (own_keys holds 'variant')
  sows_after_dropout: bool = False  # honors model.features_after_dropout
  class_token: Callable[[Any], bool] = lambda model_config: False  # has one, for this config.model
  # What a run saved before model.features_after_dropout existed did: the MLP and CNN sowed the
  # dropped-out features then. Any model added since has the key in its saved config.
  legacy_features_after_dropout: bool = False

  def resolve(self) -> Callable[..., Any]:
    """The model class."""
    if not isinstance(self.cls, str):
      return self.cls
    module, _, attr = self.cls.partition(":")
    return getattr(importlib.import_module(module), attr)


_AFTER_DROPOUT = {"features_after_dropout": False}
_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
  """Adds ``spec`` (replacing one of the same name); its own keys must not contradict another model's."""
  for other in _REGISTRY.values():
    for key in spec.own_keys.keys() & other.own_keys.keys():
      if other.name != spec.name and other.own_keys[key] != spec.own_keys[key]:
        raise ValueError(
          f"model {spec.name!r}: config.model.{key} defaults to {spec.own_keys[key]!r}, but "
          f"{other.name!r} already gives it {other.own_keys[key]!r}; one key has one default."
        )
  _REGISTRY[spec.name] = spec
  return spec


def unregister(name: str) -> None:
  """Removes a model registered with ``register`` (e.g. a test's)."""
  _REGISTRY.pop(name, None)


def get(name: str) -> ModelSpec:
  """The spec of ``config.model.name``, or the one-line error naming the registered ones."""
  if name not in _REGISTRY:
    raise UserError(f"config.model.name: unknown model {name!r}; valid names: {', '.join(names())}.")
  return _REGISTRY[name]


def known(name: str) -> ModelSpec | None:
  """The spec of ``name``, or None (a saved run of a model registered only in its own code)."""
  return _REGISTRY.get(name)


def names() -> tuple[str, ...]:
  return tuple(_REGISTRY)


def own_key_defaults() -> dict[str, Any]:
  """Every registered model's own config.model keys with their defaults (all live in the base config)."""
  out: dict[str, Any] = {}
  for spec in _REGISTRY.values():
    out.update(spec.own_keys)
  return out


register(
  ModelSpec(
    "mlp",
    "rlp_jax.models.mlp:MLP",
    "block_1 .. block_<depth>, pre_logits",
    own_keys=_AFTER_DROPOUT,
    sows_after_dropout=True,
    legacy_features_after_dropout=True,
  )
)
register(
  ModelSpec(
    "cnn",
    "rlp_jax.models.cnn:CNN",
    "block_1 .. block_<depth>, pre_logits",
    own_keys=_AFTER_DROPOUT,
    sows_after_dropout=True,
    legacy_features_after_dropout=True,
  )
)
register(ModelSpec("wrn", "rlp_jax.models.wrn:WideResNet", "block_1 .. block_3, pre_logits"))
register(
  ModelSpec(
    "vit",
    "rlp_jax.models.vit:VisionTransformer",
    "block_01 .. block_<depth>, pre_logits",
    # Variant Ti|S|B|L sets width/depth/heads (width, depth, num_heads of 0 = the variant's; nonzero values
    # override it); 'float32' or 'bfloat16' matmuls (params, logits, losses fp32); the class token
    # ('token') or global average pooling ('gap') feeds the class head (models/vit.py).
    own_keys=dict(variant="B", patch_size=16, num_heads=0, dtype="float32", classifier="token"),
    size_from_variant=True,
    class_token=lambda model_config: model_config.get("classifier", "token") == "token",
  )
)
