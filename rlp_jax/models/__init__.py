"""Model zoo: classifiers that sow named intermediates for label-prediction heads.

Every model shares one calling convention,
``model(x, *, train=False, rngs=None) -> logits (B, num_classes)``, keeps only
``nnx.Param``/``nnx.BatchStat`` state, names its class head ``head`` and, under
``nnx.capture(model, nnx.Intermediate)``, sows flat top-level intermediates
``block_1 .. block_k`` (ViT: ``block_01 .. block_NN``, zero-padded) and ``pre_logits``.

``sown_features`` is that capture for any nnx model, ours or not: what RLP heads read.
"""

from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from rlp_jax.infra import model_registry
from rlp_jax.models.cnn import CNN
from rlp_jax.models.mlp import MLP
from rlp_jax.models.sow import sow_intermediate
from rlp_jax.models.vit import VisionTransformer
from rlp_jax.models.wrn import WideResNet

__all__ = [
  "CNN",
  "MLP",
  "VisionTransformer",
  "WideResNet",
  "apply",
  "create_model",
  "sow_intermediate",
  "sown_features",
]


def create_model(
  model_config: ml_collections.ConfigDict,
  num_classes: int,
  input_shape: tuple,
  rngs: nnx.Rngs,
) -> nnx.Module:
  """Build the model named by ``model_config.name`` (infra/model_registry.py lists them).

  ``input_shape`` excludes the batch dim, e.g. (8, 8, 1) or (40, 1); models
  need it up front because nnx layers are created with concrete sizes.
  """
  spec = model_registry.get(model_config.name)
  extra = {k: model_config.get(k, default) for k, default in spec.own_keys.items()}
  return spec.resolve()(
    tuple(input_shape),
    num_classes,
    width=int(model_config.width),
    depth=int(model_config.depth),
    dropout=float(model_config.dropout),
    **extra,
    rngs=rngs,
  )


def apply(model_def, params, batch_stats, x, *, train: bool, dropout_key=None):
  """Functional application: ``(class logits, {sown name: activation}, updated batch stats)``.

  The model is rebuilt from pure-dict state inside the caller's ``jax.jit``; its sown intermediates are
  the live activations (still connected to the parameters), which is what the RLP losses need.
  """
  model = nnx.merge(model_def, params, batch_stats)
  rngs = nnx.Rngs(dropout=dropout_key) if train else None
  logits, features = sown_features(model, x, train=train, rngs=rngs)
  return logits, features, nnx.state(model, nnx.BatchStat).to_pure_dict()


def sown_features(model: nnx.Module, *args, **kwargs) -> tuple[object, dict[str, jax.Array]]:
  """``model(*args, **kwargs)`` under ``nnx.capture``: ``(output, {name: activation})``.

  Each ``nnx.Intermediate`` the call sows (``self.sow(nnx.Intermediate, name, x)`` anywhere in the model)
  is returned by its path: ``name`` when sown by the top module, ``'block/name'`` by a submodule. A
  value sown several times in one call keeps its last. The activations stay connected to the parameters,
  which the regularizer L_reg needs (docs/design.md §1).
  """
  out, sown = nnx.capture(model, nnx.Intermediate)(*args, **kwargs)
  return out, {"/".join(map(str, path)): var.get_value()[-1] for path, var in sown.flat_state()}
