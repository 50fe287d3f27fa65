"""Model zoo: classifiers that sow named intermediates for label-prediction heads.

Every model shares one calling convention,
``model(x, *, train=False, rngs=None) -> logits (B, num_classes)``, keeps only
``nnx.Param``/``nnx.BatchStat`` state, names its class head ``head`` and, under
``nnx.capture(model, nnx.Intermediate)``, sows flat top-level intermediates
``block_1 .. block_k`` (ViT: ``block_01 .. block_NN``, zero-padded) and ``pre_logits``.
"""

from __future__ import annotations

import ml_collections
from flax import nnx

from rlp_jax.infra.errors import UserError
from rlp_jax.models.cnn import CNN
from rlp_jax.models.mlp import MLP
from rlp_jax.models.vit import VisionTransformer
from rlp_jax.models.wrn import WideResNet

_MODELS = {"mlp": MLP, "cnn": CNN, "wrn": WideResNet, "vit": VisionTransformer}
MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)
# ViT-only keys of config.model (absent keys take the model's defaults).
_VIT_KEYS = ("variant", "patch_size", "num_heads", "dtype", "classifier")

__all__ = ["CNN", "MLP", "MODEL_NAMES", "VisionTransformer", "WideResNet", "apply", "create_model"]


def create_model(
  model_config: ml_collections.ConfigDict,
  num_classes: int,
  input_shape: tuple,
  rngs: nnx.Rngs,
) -> nnx.Module:
  """Build the model named by ``model_config.name``.

  ``input_shape`` excludes the batch dim, e.g. (8, 8, 1) or (40, 1); models
  need it up front because nnx layers are created with concrete sizes.
  """
  name = model_config.name
  if name not in _MODELS:
    raise UserError(f"Unknown config.model.name {name!r}; valid names: {', '.join(MODEL_NAMES)}.")
  extra = {k: model_config[k] for k in _VIT_KEYS if k in model_config} if name == "vit" else {}
  return _MODELS[name](
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
  logits, sown = nnx.capture(model, nnx.Intermediate)(x, train=train, rngs=rngs)
  features = {name: var.get_value()[-1] for name, var in sown.items()}
  return logits, features, nnx.state(model, nnx.BatchStat).to_pure_dict()
