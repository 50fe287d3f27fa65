"""Labels and data: the bottom layer above infra (docs/design.md §6).

TensorFlow (the input pipeline's engine) is imported here first, without the start-up lines its C++ side
prints whatever TF_CPP_MIN_LOG_LEVEL says.
"""

from rlp_jax.infra import console

console.import_quietly("tensorflow")
