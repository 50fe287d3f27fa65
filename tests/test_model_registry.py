"""infra/model_registry.py: a model added through the registry alone trains with heads on what it sows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_config
from flax import nnx

from rlp_jax.data import input_pipeline
from rlp_jax.infra import configuration, model_registry, rundir
from rlp_jax.infra.errors import UserError
from rlp_jax.models import sow_intermediate
from rlp_jax.training import experiment as experiment_lib
from rlp_jax.training import steps


class Toy(nnx.Module):
  """A model written only against the README's contract: one hidden layer with BatchNorm, a class head."""

  def __init__(self, input_shape, num_classes, *, width, depth, dropout, scale=1.0, rngs):
    del depth
    self.scale = scale
    self.dense = nnx.Linear(int(np.prod(input_shape)), width, rngs=rngs)
    self.norm = nnx.BatchNorm(width, rngs=rngs)
    self.drop = nnx.Dropout(dropout)
    self.head = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, x, *, train=False, rngs=None):
    h = jax.nn.relu(
      self.norm(self.dense(x.reshape(x.shape[0], -1)) * self.scale, use_running_average=not train)
    )
    sow_intermediate(self, "hidden", h)
    h = self.drop(h, deterministic=not train, rngs=rngs)
    sow_intermediate(self, "pre_logits", h)
    return self.head(h)


@pytest.fixture
def toy():
  spec = model_registry.register(
    model_registry.ModelSpec("toy", Toy, "hidden, pre_logits", own_keys={"scale": 1.0})
  )
  yield spec
  model_registry.unregister("toy")


def test_a_model_added_through_the_registry_alone_trains_with_heads(toy, data_dir):
  config = make_tiny_config(data_dir)
  config.model = configuration.base_config().model  # now holds the toy's own key, scale
  config.model.update(name="toy", width=16, dropout=0.1, scale=2.0)
  config.rlp.layers = config.probes.layers = "all"
  config.rlp.reg_lambda = 1.0
  experiment, state = experiment_lib.build(config)
  assert experiment.sown_layers == ("hidden", "pre_logits") and experiment.rlp_layers == (
    "hidden",
    "pre_logits",
  )
  before = jax.device_get(state)
  step = steps.make_train_step(experiment)
  state = step(
    state,
    experiment_lib.device_batch(
      experiment, next(input_pipeline.train_batches(config, experiment.info, epoch=0))
    ),
  )
  after = jax.device_get(state)
  assert np.all(np.isfinite(after.loss_sums["loss/reg"])) and after.loss_sums["loss/reg"] > 0
  moved = lambda a, b: not np.array_equal(a, b)
  assert moved(before.batch_stats["norm"]["mean"], after.batch_stats["norm"]["mean"])  # BatchNorm carried
  assert moved(
    before.params["rlp"]["layers"]["hidden"]["kernel"], after.params["rlp"]["layers"]["hidden"]["kernel"]
  )


def test_the_registry_answers_validation_and_migration(toy, data_dir):
  config = make_tiny_config(data_dir)
  config.model = configuration.base_config().model
  config.model.name = "toy"
  config.model.width = 0  # only a model sized by a variant takes 0
  with pytest.raises(UserError, match=r"config\.model\.width"):
    configuration.validate(config)
  config.model.width, config.model.features_after_dropout = 8, True
  with pytest.raises(UserError, match=r"config\.model\.features_after_dropout"):
    configuration.validate(config)
  config.model.name = "resnet"
  with pytest.raises(UserError, match=r"config\.model\.name: unknown model 'resnet'.*toy"):
    configuration.validate(config)
  # A run saved before features_after_dropout existed: the MLP sowed after its dropout, the toy did not.
  assert rundir.migrate({"model": {"name": "mlp"}})["model"]["features_after_dropout"] is True
  assert rundir.migrate({"model": {"name": "toy"}})["model"]["features_after_dropout"] is False


def test_one_key_has_one_default_across_models(toy):
  with pytest.raises(ValueError, match="scale"):
    model_registry.register(model_registry.ModelSpec("toy2", Toy, "x", own_keys={"scale": 3.0}))
  assert "toy2" not in model_registry.names()


def test_a_sow_outside_capture_leaves_the_state_pure(toy):
  model = Toy((4,), 3, width=5, depth=1, dropout=0.0, rngs=nnx.Rngs(0))
  model(jnp.ones((2, 4)))
  _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)  # exhaustive: nothing else was stored
  assert params and stats
