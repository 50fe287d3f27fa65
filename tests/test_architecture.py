"""The package's shape (docs/design.md §6).

Nothing imports what stands above it, no import circle, no module past the length cap (also when formatted
at 88 columns, so no module fits the cap only by width), no nested conditional expression.
"""

from __future__ import annotations

import ast
import pathlib
import shutil
import subprocess
import sys

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
    parts = rel.parts[:-1] if rel.parts[-1] == "__init__" else rel.parts
    yield ".".join(parts), path


def _circles(modules) -> list[list[str]]:
  """The import circles among ``modules``: each strongly connected set of two or more modules.

  An imported name resolves to the longest module name it starts with (``rlp_jax.heads.label_axis.Spec``
  is ``rlp_jax.heads.label_axis``); imports inside functions count, since they close a circle all the same.
  """
  paths = dict(modules)

  def resolve(name):
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
      if ".".join(parts[:k]) in paths:
        return ".".join(parts[:k])
    return None

  graph = {m: {resolve(i) for i in _imports(p)} - {None, m} for m, p in paths.items()}
  # Tarjan's strongly connected components.
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(m):
    index[m] = low[m] = len(index)
    stack.append(m)
    on_stack.add(m)
    for n in sorted(graph[m]):
      if n not in index:
        visit(n)
        low[m] = min(low[m], low[n])
      elif n in on_stack:
        low[m] = min(low[m], index[n])
    if low[m] == index[m]:
      component = []
      while not component or component[-1] != m:
        component.append(stack.pop())
        on_stack.discard(component[-1])
      if len(component) > 1:
        out.append(sorted(component))

  for m in sorted(graph):
    if m not in index:
      visit(m)
  return out


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


def test_no_import_circle_inside_the_package():
  circles = _circles(_package_modules())
  assert not circles, "import circles: " + "; ".join(" ↔ ".join(c) for c in circles)


def test_the_circle_check_sees_a_circle_closed_inside_a_function(tmp_path):
  (tmp_path / "a.py").write_text("from rlp_jax.heads.b import f\n")
  (tmp_path / "b.py").write_text("def f():\n  from rlp_jax.heads import a\n")
  (tmp_path / "c.py").write_text("from rlp_jax.heads import a\n")
  modules = [(f"rlp_jax.heads.{n}", tmp_path / f"{n}.py") for n in "abc"]
  assert _circles(modules) == [["rlp_jax.heads.a", "rlp_jax.heads.b"]]


def _nested_conditionals(path: pathlib.Path) -> list[int]:
  """Lines of conditional expressions that hold another in a branch or in their test."""
  lines = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.IfExp):
      inner = (n for part in (node.test, node.body, node.orelse) for n in ast.walk(part))
      if any(isinstance(n, ast.IfExp) for n in inner):
        lines.append(node.lineno)
  return lines


def test_no_nested_conditional_expressions():
  found = [
    f"{p.relative_to(ROOT.parent)}:{n}" for _, p in _package_modules() for n in _nested_conditionals(p)
  ]
  assert not found, "write these as if-statements: " + ", ".join(found)


def test_the_nested_conditional_check_sees_one(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("x = 1\ny = 'a' if x else ('b' if x > 1 else 'c')\nz = 'a' if x else 'b'\n")
  assert _nested_conditionals(bad) == [2]


def test_top_level_holds_only_the_commands():
  top = sorted(p.stem for p in ROOT.glob("*.py") if p.stem != "__init__")
  assert top == sorted(COMMANDS)


MAX_LINES = 450


def _lines_at_88_columns(src: pathlib.Path, tmp_path: pathlib.Path) -> dict[str, int]:
  """Each module's line count once ruff formats a copy of it at 88 columns (the project's own settings)."""
  copy = tmp_path / "copy"
  shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
  cmd = [sys.executable, "-m", "ruff", "format", "--config", str(ROOT.parent / "pyproject.toml")]
  out = subprocess.run([*cmd, "--line-length", "88", str(copy)], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  return {str(p.relative_to(copy)): len(p.read_text().splitlines()) for p in sorted(copy.rglob("*.py"))}


def _too_long(src: pathlib.Path, tmp_path: pathlib.Path) -> list[str]:
  out = []
  for rel, narrow in _lines_at_88_columns(src, tmp_path).items():
    lines = len((src / rel).read_text().splitlines())
    if max(lines, narrow) > MAX_LINES:
      out.append(f"{rel}: {lines} lines, {narrow} at 88 columns")
  return out


def test_no_module_is_a_catch_all_even_at_88_columns(tmp_path):
  too_long = _too_long(ROOT, tmp_path)
  assert not too_long, f"split these by idea (cap {MAX_LINES}): " + "; ".join(too_long)


def test_the_length_check_sees_a_module_that_fits_only_by_width(tmp_path):
  src = tmp_path / "pkg"
  src.mkdir()
  call = "f(" + ", ".join(f"argument_{i}" for i in range(12)) + ")\n"  # 100 columns: 14 lines at 88
  (src / "wide.py").write_text(call * 40)
  (src / "narrow.py").write_text("x = 1\n" * 40)
  assert _too_long(src, tmp_path / "work") == ["wide.py: 40 lines, 560 at 88 columns"]


def test_every_command_module_imports_in_one_process():
  # Each command defines its flags only when run, so importing all of them together works (absl would
  # raise DuplicateFlagError if two defined --config at import).
  code = "import " + ", ".join(f"rlp_jax.{c}" for c in COMMANDS) + "; print('ok')"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent)
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
