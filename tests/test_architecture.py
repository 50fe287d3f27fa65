"""The package's layers (docs/design.md §6): nothing imports what stands above it."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest
from cli_driver import COMMANDS

ROOT = pathlib.Path(__file__).resolve().parents[1] / "rlp_jax"
# Bottom to top. Sub-packages of one rank may not import each other (analysis and perf are siblings).
LAYERS = {"infra": 0, "data": 1, "models": 2, "heads": 3, "training": 4, "analysis": 5, "perf": 5}


def _layer(module: str) -> str | None:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 and parts[0] == "rlp_jax" and parts[1] in LAYERS else None


def _imports(path: pathlib.Path) -> set[str]:
  """Every rlp_jax module ``path`` imports, at the top or inside a function."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith("rlp_jax"))
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlp_jax"):
      out.update(f"{node.module}.{a.name}" for a in node.names)
  return out


def _package_modules():
  for path in sorted(ROOT.rglob("*.py")):
    rel = path.relative_to(ROOT.parent).with_suffix("")
    yield ".".join(rel.parts), path


def _violations(modules) -> list[str]:
  out = []
  for module, path in modules:
    own = _layer(module)
    if own is None:  # the command modules at the top may import anything
      continue
    for imported in sorted(_imports(path)):
      other = _layer(imported)
      if other is not None and other != own and LAYERS[other] >= LAYERS[own]:
        out.append(f"{module} imports {imported} ({other} is not below {own})")
  return out


def test_no_module_imports_a_layer_above_it_or_a_sibling_layer():
  violations = _violations(_package_modules())
  assert not violations, "\n".join(violations)


def test_the_layer_check_sees_a_violation(tmp_path):
  # The loop importing an analysis tool (inside a function, too) is what the check exists to catch.
  bad = tmp_path / "bad.py"
  bad.write_text("def f():\n  from rlp_jax.analysis import offline\n  from rlp_jax.heads import routing\n")
  assert _violations([("rlp_jax.training.bad", bad)]) == [
    "rlp_jax.training.bad imports rlp_jax.analysis.offline (analysis is not below training)"
  ]
  assert _violations([("rlp_jax.perf.bad", bad)]) == [
    "rlp_jax.perf.bad imports rlp_jax.analysis.offline (analysis is not below perf)"
  ]


def test_top_level_holds_only_the_commands():
  top = sorted(p.stem for p in ROOT.glob("*.py") if p.stem != "__init__")
  assert top == sorted(COMMANDS)


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT.parent)) for p in ROOT.rglob("*.py")))
def test_no_module_is_a_catch_all(path):
  lines = len((ROOT.parent / path).read_text().splitlines())
  assert lines <= 450, f"{path} has {lines} lines: split it by idea"


def test_every_command_module_imports_in_one_process():
  # Each command defines its flags only when run, so importing all of them together works (absl would
  # raise DuplicateFlagError if two defined --config at import).
  code = "import " + ", ".join(f"rlp_jax.{c}" for c in COMMANDS) + "; print('ok')"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent)
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
