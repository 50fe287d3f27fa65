"""Vision Transformer (Dosovitskiy et al., 2021) in the big_vision layout, sowing every block.

Architecture (the paper-era ViT: class token, learned position embedding, pre-LN blocks):

  image (B, H, W, C) -> Conv(P x P, stride P) patch embedding -> (B, N, D), N = (H/P)·(W/P)
    -> prepend a learned class token (``classifier='token'``) -> add a learned position embedding
    -> depth x [x + Attn(LN(x)); x + MLP(LN(x))]          sows ``block_01 .. block_NN``: (B, L, D)
    -> LN -> class token (or the mean token, ``classifier='gap'``)   sows ``pre_logits``: (B, D)
    -> ``head``: Dense(D, num_classes), zero-initialized as in big_vision

``L = N + 1`` with the class token, ``N`` with ``gap``. A head on a block reads the block's class token by
default, as the class head reads the last one (``config.rlp.pool``; the mean of all tokens or of the patch
tokens are options) and, in the ViT configs, is LayerNorm + dense (``config.rlp.norm_layers``), the head the
paper attaches to transformer blocks (§5.1, Fig. 2C); the head on ``pre_logits`` is one dense layer. Block
names are zero-padded to two digits so that they sort in depth order (``block_01 .. block_12``).

Why the class token: the paper studies ViT-B/32 and ViT-S/4 "as in Dosovitskiy et al.", whose classifier
reads the class token, and big_vision's ImageNet ViT configs of that era use ``pool_type='tok'``;
``classifier='gap'`` (global average pooling, the "plain ViT baseline" choice) is available as an option.
No representation ("pre-logits" dense + tanh) layer: it is only used for ImageNet-21k pre-training.

Numerics (``dtype='bfloat16'``): parameters are float32; matmuls and convolutions run in bf16 (their inputs
and kernels are cast); the residual stream, LayerNorms, the attention softmax, the sown intermediates, the
class head and hence the logits and all losses stay float32. ``dtype='float32'`` computes all in float32.

Initialization follows big_vision: Xavier-uniform dense kernels, MLP biases ~ N(0, 1e-6), position
embedding ~ N(0, 1/D), zero class token, LeCun-normal patch embedding, zero class head.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from rlp_jax.infra.errors import UserError
from rlp_jax.models.sow import sow_intermediate

# name -> (width D, depth, attention heads); the MLP hidden width is always 4·D (head dim 64 throughout).
VARIANTS: dict[str, tuple[int, int, int]] = {
  "Ti": (192, 12, 3),
  "S": (384, 12, 6),
  "B": (768, 12, 12),
  "L": (1024, 24, 16),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CLASSIFIERS = ("token", "gap")

_XAVIER = nnx.initializers.xavier_uniform()
_SMALL_BIAS = nnx.initializers.normal(stddev=1e-6)


def block_name(i: int, depth: int) -> str:
  """``block_01`` .. ``block_12``: zero-padded to (at least) two digits so the names sort by depth."""
  return f"block_{i:0{max(2, len(str(depth)))}d}"


def block_names(model_config) -> list[str]:
  """The sown block names of the ViT that ``model_config`` describes (its depth or its variant's)."""
  depth = model_config.depth or VARIANTS[model_config.variant][1]
  return [block_name(i, depth) for i in range(1, depth + 1)]


class Attention(nnx.Module):
  """Multi-head self-attention; logits and softmax in float32 whatever the compute dtype."""

  def __init__(self, width: int, num_heads: int, dtype, rngs: nnx.Rngs):
    self.num_heads = num_heads
    dense = lambda: nnx.Linear(width, width, kernel_init=_XAVIER, dtype=dtype, rngs=rngs)
    self.query, self.key, self.value, self.out = dense(), dense(), dense(), dense()
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    b, length, d = x.shape
    split = lambda t: t.reshape(b, length, self.num_heads, d // self.num_heads)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits / math.sqrt(d // self.num_heads), axis=-1)
    y = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), v)
    return self.out(y.reshape(b, length, d))


class MlpBlock(nnx.Module):
  def __init__(self, width: int, hidden: int, dropout: float, dtype, rngs: nnx.Rngs):
    kw = dict(kernel_init=_XAVIER, bias_init=_SMALL_BIAS, dtype=dtype, rngs=rngs)
    self.fc1 = nnx.Linear(width, hidden, **kw)
    self.fc2 = nnx.Linear(hidden, width, **kw)
    self.dropout = nnx.Dropout(dropout)  # key passed per call, no state

  def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
    y = self.dropout(jax.nn.gelu(self.fc1(x)), deterministic=not train, rngs=rngs)
    return self.fc2(y)


class EncoderBlock(nnx.Module):
  """Pre-LN transformer block: ``x + Drop(Attn(LN(x)))``, then ``x + Drop(MLP(LN(x)))``."""

  def __init__(self, width: int, num_heads: int, dropout: float, dtype, rngs: nnx.Rngs):
    self.ln1 = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
    self.attn = Attention(width, num_heads, dtype, rngs)
    self.ln2 = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
    self.mlp = MlpBlock(width, 4 * width, dropout, dtype, rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
    drop = lambda y: self.dropout(y, deterministic=not train, rngs=rngs)
    # The branches return the compute dtype; adding them to the float32 stream keeps it float32.
    x = x + drop(self.attn(self.ln1(x)))
    return x + drop(self.mlp(self.ln2(x), train=train, rngs=rngs))


class VisionTransformer(nnx.Module):
  """ViT-``variant``/``patch_size`` on (H, W, C) images. See the module docstring.

  ``width``/``depth``/``num_heads`` of 0 take the variant's values; nonzero values override them (tiny test
  models). Sows ``block_01 .. block_NN`` (B, L, D) after every block and ``pre_logits`` (B, D).
  """

  def __init__(
    self,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: int = 0,
    depth: int = 0,
    dropout: float = 0.0,
    variant: str = "B",
    patch_size: int = 16,
    num_heads: int = 0,
    dtype: str = "float32",
    classifier: str = "token",
    rngs: nnx.Rngs,
  ):
    if variant not in VARIANTS:
      raise UserError(f"config.model.variant={variant!r} is not a ViT variant; use one of {list(VARIANTS)}.")
    if dtype not in DTYPES:
      raise UserError(f"config.model.dtype={dtype!r} must be one of {list(DTYPES)}.")
    if classifier not in CLASSIFIERS:
      raise UserError(f"config.model.classifier={classifier!r} must be one of {list(CLASSIFIERS)}.")
    v_width, v_depth, v_heads = VARIANTS[variant]
    width, depth, num_heads = width or v_width, depth or v_depth, num_heads or v_heads
    if depth < 1:
      raise UserError(f"config.model.depth={depth}: a ViT needs at least one block.")
    if width % num_heads:
      raise UserError(
        f"config.model.width={width} is not divisible by {num_heads} attention heads; set "
        "config.model.num_heads to a divisor of the width (0 = the variant's)."
      )
    if len(input_shape) != 3:
      raise UserError(f"ViT needs (H, W, C) images, got input shape {tuple(input_shape)}.")
    h, w, c = input_shape
    if patch_size < 1 or h % patch_size or w % patch_size:
      raise UserError(
        f"config.model.patch_size={patch_size} must divide the image size {h}x{w} "
        "(set config.augment.image_size or the patch size)."
      )
    compute = DTYPES[dtype]
    self.depth, self.classifier, self.dtype = depth, classifier, compute
    self.embedding = nnx.Conv(
      c,
      width,
      (patch_size, patch_size),
      strides=(patch_size, patch_size),
      padding="VALID",
      kernel_init=nnx.initializers.lecun_normal(),
      dtype=compute,
      rngs=rngs,
    )
    tokens = (h // patch_size) * (w // patch_size) + (classifier == "token")
    self.cls = nnx.Param(jnp.zeros((1, 1, width))) if classifier == "token" else None
    self.pos_embedding = nnx.Param(
      nnx.initializers.normal(stddev=1 / math.sqrt(width))(rngs.params(), (1, tokens, width))
    )
    self.dropout = nnx.Dropout(dropout)
    self.blocks = nnx.List([EncoderBlock(width, num_heads, dropout, compute, rngs) for _ in range(depth)])
    self.encoder_norm = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
    self.head = nnx.Linear(width, num_classes, kernel_init=nnx.initializers.zeros, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Return float32 logits (B, num_classes); ``train`` enables dropout."""
    x = self.embedding(x.astype(self.dtype)).astype(jnp.float32)
    b, d = x.shape[0], x.shape[-1]
    x = x.reshape(b, -1, d)
    if self.cls is not None:
      x = jnp.concatenate([jnp.broadcast_to(self.cls[...], (b, 1, d)), x], axis=1)
    x = self.dropout(x + self.pos_embedding[...], deterministic=not train, rngs=rngs)
    for i, block in enumerate(self.blocks, start=1):
      x = block(x, train=train, rngs=rngs)
      sow_intermediate(self, block_name(i, self.depth), x)
    x = self.encoder_norm(x)
    x = x[:, 0] if self.classifier == "token" else x.mean(axis=1)
    sow_intermediate(self, "pre_logits", x)
    return self.head(x)
