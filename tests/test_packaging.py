"""The package as installed: config files load from any directory; pyproject.toml agrees with requirements."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from rlp_jax.infra import config_args
from rlp_jax.infra.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p) for p in (REPO / "configs").glob("*.py") if p.name != "__init__.py")

# Loads each config file given on the command line through ml_collections' --config flag, exactly as
# every command (rlp_jax.main, .plan, .sweep, ...) does, and prints what it read.
_LOAD = """
import sys
from absl import flags
from ml_collections import config_flags
for i in range(1, len(sys.argv)):
  config_flags.DEFINE_config_file(f"c{i}")
flags.FLAGS([sys.argv[0]] + [f"--c{i}={p}" for i, p in enumerate(sys.argv[1:], 1)])
for i in range(1, len(sys.argv)):
  c = getattr(flags.FLAGS, f"c{i}")
  print(c.dataset, c.model.name, c.num_epochs)
import rlp_jax
print(rlp_jax.__file__)
"""


def test_config_files_load_from_outside_the_repository(tmp_path, package_only_env):
  # cwd and sys.path hold neither configs/ nor the repository root: a config importing anything but
  # rlp_jax (e.g. `from configs import ...`) fails here.
  quick = {"digits.py": ":tiny", "paper_digits.py": ":quick", "paper_mnist1d.py": ":quick"}
  args = [p + quick.get(pathlib.Path(p).name, "") for p in CONFIGS]
  out = subprocess.run(
    [sys.executable, "-c", _LOAD, *args], cwd=tmp_path, env=package_only_env, capture_output=True, text=True
  )
  assert out.returncode == 0, out.stderr[-3000:]
  *loaded, package = out.stdout.split()[-3 * len(CONFIGS) - 1 :]
  expected = {
    "digits.py": ["digits", "mlp", "2"],  # :tiny
    "paper_digits.py": ["digits", "cnn", "2"],  # :quick
    "paper_mnist1d.py": ["mnist1d/4k", "mlp", "2"],  # :quick
    "vit_cifar100.py": ["cifar100", "vit", "200"],
    "vit_imagenet.py": ["imagenet2012", "vit", "90"],
    "wrn_cifar100.py": ["cifar100", "wrn", "200"],
  }
  assert loaded == [word for p in CONFIGS for word in expected[pathlib.Path(p).name]], out.stdout
  # This checkout's package, through the symlink: not another installed copy.
  assert package == str(pathlib.Path(package_only_env["PYTHONPATH"]) / "rlp_jax" / "__init__.py")


def test_from_file_is_the_config_files_get_config():
  for path in CONFIGS:
    module = config_args.load_module(path)
    assert config_args.from_file(path).to_dict() == module.get_config().to_dict()
  digits = str(REPO / "configs" / "digits.py")
  tiny = config_args.from_file(f"{digits}:cnn,tiny")
  assert (tiny.model.name, tiny.num_epochs) == ("cnn", 2)
  with pytest.raises(UserError, match="unknown arg"):
    config_args.from_file(f"{digits}:huge")
  with pytest.raises(UserError, match="no such config file"):
    config_args.from_file(str(REPO / "configs" / "missing.py"))


def _requirements(lines) -> list[Requirement]:
  return [Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip()]


def test_pyproject_ranges_hold_the_pinned_set_and_name_every_pin():
  """requirements.txt (what CI installs and the tests ran on) pins one version of every package that
  pyproject.toml names; each pin lies in pyproject's range, under the same platform markers."""
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  ranges = _requirements(project["dependencies"] + project["optional-dependencies"]["test"])
  pins = _requirements((REPO / "requirements.txt").read_text().splitlines())
  key = lambda r: (canonicalize_name(r.name), str(r.marker))
  by_key = {key(r): r for r in ranges}
  assert sorted(by_key) == sorted(key(r) for r in pins)
  for pin in pins:
    (version,) = [s.version for s in pin.specifier if s.operator == "=="]
    assert by_key[key(pin)].specifier.contains(version), (pin, by_key[key(pin)])
    assert by_key[key(pin)].extras == pin.extras, (pin, by_key[key(pin)])
  assert project["requires-python"] == ">=3.11"
