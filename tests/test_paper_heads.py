"""The paper's heads by default (docs/design.md §1, §7): shapes per paper config, built abstractly; what
a head on a ViT block reads; CNN/MLP features sown before dropout; the options' one-line errors."""

from __future__ import annotations

import importlib
import json
import pathlib
import re
import shlex

import jax
import numpy as np
import pytest
from conftest import make_tiny_config
from flax import nnx

from rlp_jax import models
from rlp_jax.data.input_pipeline import DataInfo
from rlp_jax.heads import heads as heads_lib
from rlp_jax.infra import config_args, configuration, rundir
from rlp_jax.infra.errors import UserError
from rlp_jax.training import evaluators
from rlp_jax.training import experiment as experiment_lib

# What each paper config trains on (the real sizes: nothing is read or allocated, shapes only).
INFO = {
  "imagenet2012": DataInfo("imagenet2012", 1_281_167, 50_000, 1000, (224, 224, 3), 1_281_167),
  "cifar100": DataInfo("cifar100", 50_000, 10_000, 100, (32, 32, 3), 50_000),
}


# Compiled once per model, not dispatched op by op.
_apply = jax.jit(models.apply, static_argnums=0, static_argnames="train")


def _abstract_heads(name: str, arg: str):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  experiment, state = experiment_lib.build(config, INFO[config.dataset], abstract=True)
  shapes = lambda group: {  # noqa: E731
    layer: {k: v.shape for k, v in p.items()} for layer, p in state.params[group].get("layers", {}).items()
  }
  return experiment, shapes("rlp"), shapes("probes")


@pytest.mark.parametrize(
  "name,arg,width,n", [("vit_imagenet", "probes", 768, 100_000), ("vit_cifar100", "reg_last", 384, 10_000)]
)
def test_vit_configs_put_the_papers_heads(name, arg, width, n):
  """pre_logits (already layer-normed by the ViT): one dense layer, the paper's default head. Heads on
  blocks: LayerNorm + dense (Fig. 2C), reading the class token; class probes on blocks likewise."""
  experiment, rlp, probes = _abstract_heads(name, arg)
  assert experiment.pool == "token"
  dense = {"kernel": (1, width, n), "bias": (1, n)}
  normed = {**dense, "scale": (1, width), "shift": (1, width)}
  blocks = {f"block_{i:02d}" for i in range(1, 13)}
  if arg == "probes":  # the default head, plus class probes on every block
    assert rlp == {"pre_logits": dense}
    assert set(probes) == blocks and all("scale" in shapes for shapes in probes.values()), probes
  else:
    assert set(rlp) == blocks and all(shapes == normed for shapes in rlp.values()), rlp


@pytest.mark.parametrize("override,depth", [({"depth": 6}, 6), ({"variant": "L"}, 24)])
def test_vit_config_norm_layers_follow_the_depth_the_user_sets(override, depth):
  """rlp.norm_layers='blocks' resolves against the model built: every block of a 6-block or a ViT-L
  (24-block) model gets LayerNorm + dense, pre_logits one dense layer. (A list of the 12 default blocks,
  fixed when the config was made, refused depth 6 and left ViT-L's blocks 13-24 without the LayerNorm.)"""
  config = importlib.import_module("configs.vit_cifar100").get_config()
  config.model.update(override)
  config.rlp.layers = "all"
  experiment, state = experiment_lib.build(config, INFO["cifar100"], abstract=True)
  has_norm = {k: "scale" in v for k, v in state.params["rlp"]["layers"].items()}
  blocks = [f"block_{i:02d}" for i in range(1, depth + 1)]
  assert list(experiment.rlp_layers) == [*blocks, "pre_logits"]
  assert has_norm == {**dict.fromkeys(blocks, True), "pre_logits": False}


def test_layer_heads_refuse_a_string_for_norm():
  """A str is a Collection: norm='all' would have meant 'a layer named a, l or l', i.e. no LayerNorm."""
  for norm in ("all", "block_1"):
    with pytest.raises(TypeError, match=r"norm=True \(every layer\)"):
      heads_lib.LayerHeads({"block_1": 4}, 3, 1, norm=norm, hidden_dim=0, rngs=nnx.Rngs(0))
  heads = heads_lib.LayerHeads({"block_1": 4, "x": 4}, 3, 1, norm={"block_1"}, hidden_dim=0, rngs=nnx.Rngs(0))
  assert heads.layers["block_1"].norm and not heads.layers["x"].norm


def test_pool_features_refuses_the_unresolved_classifier_token():
  """routed_losses/pool_features take a resolved pooling; 'classifier' (the runs' default) needs the model's
  config, so it is refused naming what to pass, not treated as some other pooling."""
  z = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # (B, 1 + N, D)
  with pytest.raises(UserError, match=r"'classifier' is resolved per model.*'token'.*'mean'") as err:
    heads_lib.pool_features(z, "classifier")
  assert "\n" not in str(err.value)
  config = configuration.base_config()
  config.model.update(name="vit", classifier="token")
  np.testing.assert_array_equal(heads_lib.pool_features(z, configuration.feature_pool(config)), z[:, 0])


def test_wrn_config_heads_are_dense_on_mean_pooled_groups():
  experiment, rlp, _ = _abstract_heads("wrn_cifar100", "all_blocks")
  assert experiment.pool == "mean"
  assert rlp["pre_logits"] == {"kernel": (1, 256, 10_000), "bias": (1, 10_000)}
  assert all(set(shapes) == {"kernel", "bias"} for shapes in rlp.values()), rlp


def test_a_vit_block_head_reads_what_rlp_pool_says(data_dir):
  """By default (rlp.pool='classifier') the class token, through the evaluation's feature path (the one
  offline heads and scores read too); the options pool the same map as they say."""
  config = make_tiny_config(data_dir)
  config.model.update(name="vit", width=16, depth=2, num_heads=2, patch_size=4, dtype="float32")
  config.rlp.layers = "block_01,pre_logits"
  experiment, state = experiment_lib.build(config)
  image = jax.random.normal(jax.random.key(0), (3, *experiment.info.input_shape))
  _, pooled = evaluators.Features(experiment)(state.params["model"], state.batch_stats, image)
  _, sown, _ = _apply(experiment.model_def, state.params["model"], state.batch_stats, image, train=False)
  z = np.asarray(sown["block_01"])
  assert z.shape == (3, 1 + 4, 16)  # 8x8 digits, 4x4 patches, the class token first
  np.testing.assert_allclose(pooled["block_01"], z[:, 0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pooled["pre_logits"], sown["pre_logits"], rtol=1e-5, atol=1e-6)
  expected = {
    "token": z[:, 0],
    "mean_patches": z[:, 1:].mean(1),
    "mean": z.mean(1),
    "flatten": z.reshape(3, -1),
  }
  for pool, want in expected.items():
    config.rlp.pool = pool
    assert configuration.feature_pool(config) == pool
    np.testing.assert_allclose(heads_lib.pool_features(sown["block_01"], pool), want, rtol=1e-6)


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_features_are_sown_before_dropout(name):
  """In train mode the heads and L_reg read the representation, not one dropout draw of it: with one block
  (so no dropout before the sown features) every sown feature equals eval mode's, while the class logits
  still see dropout. ``features_after_dropout`` sows the dropped-out features instead."""

  def model(after: bool):
    cfg = configuration.base_config().model
    cfg.update(name=name, width=8, depth=1, dropout=0.5, features_after_dropout=after)
    return lambda: models.create_model(cfg, 10, (8, 8, 1), nnx.Rngs(0))

  # One initialization (where the features are sown changes no parameter); inside jit, as training does.
  params, stats = jax.jit(
    lambda: [s.to_pure_dict() for s in nnx.split(model(False)(), nnx.Param, nnx.BatchStat)[1:]]
  )()
  x = jax.random.normal(jax.random.key(1), (16, 8, 8, 1))

  def run(after: bool, train: bool):
    graph = nnx.graphdef(nnx.eval_shape(model(after)))
    key = jax.random.key(2) if train else None
    logits, sown, _ = _apply(graph, params, stats, x, train=train, dropout_key=key)
    return logits, sown

  eval_logits, eval_sown = run(False, train=False)
  train_logits, train_sown = run(False, train=True)
  assert set(train_sown) == {"block_1", "pre_logits"}
  for layer in train_sown:
    np.testing.assert_array_equal(train_sown[layer], eval_sown[layer])
  if name == "cnn":  # pre_logits is the global average of the last block's map
    np.testing.assert_allclose(train_sown["pre_logits"], train_sown["block_1"].mean((1, 2)), rtol=1e-6)
  assert not np.allclose(train_logits, eval_logits)  # dropout is on, where the class head reads
  _, dropped = run(True, train=True)
  assert np.mean(np.asarray(dropped["pre_logits"]) == 0) > 0.2  # ~half of the units dropped


@pytest.mark.parametrize(
  "overrides,message",
  [
    ({"rlp.pool": "cls"}, "config.rlp.pool: must be one of"),
    ({"rlp.pool": "token"}, "config.rlp.pool: 'token' needs a ViT with a class token"),
    ({"rlp.pool": "mean_patches", "model.name": "vit", "model.classifier": "gap"}, "config.rlp.pool:"),
    ({"model.name": "wrn", "model.features_after_dropout": True}, "config.model.features_after_dropout:"),
  ],
)
def test_bad_head_options_fail_in_one_line(overrides, message):
  config = configuration.base_config()
  for key, value in overrides.items():
    section, leaf = key.split(".")
    config[section][leaf] = value
  with pytest.raises(UserError, match=message.replace(".", r"\.")) as err:
    configuration.validate(config)
  assert "\n" not in str(err.value)


def test_unknown_norm_layer_names_what_the_model_sows(data_dir):
  config = make_tiny_config(data_dir)
  config.rlp.norm_layers = "block_9"
  with pytest.raises(UserError, match=r"config\.rlp\.norm_layers='block_9': the model does not sow"):
    experiment_lib.build(config, abstract=True)
  config.rlp.norm_layers = "block_1"  # a sown layer: its heads and probes get the LayerNorm, the others not
  config.probes.layers = "all"
  _, state = experiment_lib.build(config, abstract=True)
  has_norm = lambda group: {k: "scale" in v for k, v in state.params[group]["layers"].items()}  # noqa: E731
  assert has_norm("rlp") == {"block_1": True, "pre_logits": False}
  assert has_norm("probes") == {"block_1": True, "block_2": False, "pre_logits": False}
  assert heads_lib.norm_layers(config, {"block_1": 1, "pre_logits": 1}) == {"block_1"}


CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
  "norm,expected",
  [
    (False, ["model.features_after_dropout", "probes.layers", "rlp.pool"]),
    (True, ["model.features_after_dropout", "probes.layers", "rlp.norm_layers", "rlp.pool"]),
  ],
)
def test_an_old_run_is_compared_in_todays_keys_and_resumes_with_the_saved_values(tmp_path, norm, expected):
  """A config.json written before rlp.norm_layers, rlp.pool='classifier', features sown before dropout and
  rlp.loss_kernel: resuming it with today's defaults names exactly what would change the experiment (old
  pool 'mean', the CNN's features after dropout, the LayerNorm on every layer if rlp.norm was on, and the
  user's own probes.layers=''), never a key the user cannot pass; the flags the message gives resume it."""
  from absl import flags
  from ml_collections import config_flags

  from rlp_jax.training import checkpointing

  digits = str(CONFIG_DIR / "digits.py")
  old = rundir.config_dict(config_args.from_file(digits))
  for section, key in [
    ("rlp", "loss_kernel"),
    ("rlp", "norm_layers"),
    ("rlp", "pool"),
    ("rlp", "reg_normalization"),
  ]:
    del old[section][key]
  del old["model"]["features_after_dropout"], old["offline"]["at_init_scale_free"]
  old["rlp"]["norm"] = norm
  old["probes"]["layers"] = ""  # a real choice of that run's (today's file says 'all'): '' must be passable
  assert old["model"]["name"] == "cnn"
  rundir.atomic_write(str(tmp_path / rundir.CONFIG_FILE), json.dumps(old))

  with pytest.raises(UserError) as err:
    checkpointing.check_same_experiment(config_args.from_file(digits), str(tmp_path))
  message = str(err.value)
  assert re.findall(r"config\.([\w.]+): saved", message) == expected, message
  assert "config.rlp.pool: saved 'mean' vs now 'classifier'" in message
  assert "config.model.features_after_dropout: saved True vs now False" in message
  overrides = shlex.split(re.search(r"resume it with the saved values: (.*)\. Nothing", message)[1])
  assert sorted(o.split("=")[0] for o in overrides) == [f"--config.{k}" for k in expected]

  # The command that trained it, plus those flags, parsed as every command parses --config: accepted.
  argv, flag_values = ["prog", f"--config={digits}", *overrides], flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  checkpointing.check_same_experiment(flag_values.config, str(tmp_path))
  resumed = rundir.load_config(str(tmp_path))
  assert (resumed.rlp.pool, resumed.model.features_after_dropout) == ("mean", True)
  assert (resumed.rlp.norm_layers, resumed.probes.layers) == ("all" if norm else "", "")
  assert resumed.rlp.reg_normalization == "per_example"  # what λ meant before the key existed


def test_a_run_saved_with_the_former_rlp_norm_still_loads(tmp_path):
  """config.json written before rlp.norm_layers (one bool for every layer) reads as 'all' / ''."""
  for norm, layers in ((True, "all"), (False, "")):
    saved = configuration.base_config().to_dict()
    del saved["rlp"]["norm_layers"]
    saved["rlp"]["norm"] = norm
    rundir.atomic_write(str(tmp_path / rundir.CONFIG_FILE), json.dumps(saved))
    config = rundir.load_config(str(tmp_path))
    assert config.rlp.norm_layers == layers and "norm" not in config.rlp


def test_a_paper_run_saved_before_the_lambda_convention_keeps_its_meaning(tmp_path):
  """A wrn_cifar100 run saved before rlp.reg_normalization trained with λ per example; today's config reads
  λ as the paper's. Resuming it with today's config is refused naming the key, not silently rescaled."""
  from rlp_jax.training import checkpointing

  wrn = str(CONFIG_DIR / "wrn_cifar100.py")
  old = rundir.config_dict(config_args.from_file(wrn))
  del old["rlp"]["reg_normalization"]
  rundir.atomic_write(str(tmp_path / rundir.CONFIG_FILE), json.dumps(old))
  assert rundir.load_config(str(tmp_path)).rlp.reg_normalization == "per_example"
  with pytest.raises(UserError, match=r"config\.rlp\.reg_normalization: saved 'per_example' vs now 'paper'"):
    checkpointing.check_same_experiment(config_args.from_file(wrn), str(tmp_path))
