"""Runs many command lines of the ``python -m rlp_jax.<command>`` tools cheaply, for tests/test_cli_errors.py.

Starting Python, JAX and TensorFlow takes seconds per command line on 2 cores; this driver imports every
command module once and then runs each command line in a forked child, exactly as ``python -m`` would (the
module is executed as ``__main__`` with ``sys.argv`` set, its flags defined afresh in the child). A command
line that would start real work is stopped by an alarm.

  python tests/cli_driver.py CASES.json RESULTS.json

CASES.json: a list of ``{"module": "rlp_jax.main", "argv": [...], "cwd": DIR}``; RESULTS.json: for each,
``{"rc": int, "stdout": str, "stderr": str}``.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import signal
import sys
import tempfile
import traceback

# The package's commands (rlp_jax/<name>.py); test_architecture and test_cli_errors import this list.
COMMANDS = (
  "main",
  "offline",
  "memorization",
  "ground_truth",
  "report",
  "sweep",
  "reproduce",
  "benchmark",
  "plan",
  "resize_dataset",
)
TIMEOUT_S = 60


def _child(case: dict, out: str, err: str) -> None:
  signal.alarm(TIMEOUT_S)
  for fd, path in ((1, out), (2, err)):
    os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
  code = 0
  try:
    os.chdir(case.get("cwd") or os.getcwd())
    sys.argv = [case["module"].replace(".", "/") + ".py", *case["argv"]]
    # The parent imported the module to load its dependencies; run it as a fresh __main__ here.
    sys.modules.pop(case["module"], None)
    runpy.run_module(case["module"], run_name="__main__", alter_sys=True)
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:  # noqa: BLE001 -- what python -m would print for an uncaught exception
    traceback.print_exc()
    code = 1
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def run_cases(cases: list[dict]) -> list[dict]:
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for i, case in enumerate(cases):
      out, err = os.path.join(tmp, f"{i}.out"), os.path.join(tmp, f"{i}.err")
      pid = os.fork()
      if pid == 0:
        _child(case, out, err)
      _, status = os.waitpid(pid, 0)
      rc = os.waitstatus_to_exitcode(status)
      with open(out) as f_out, open(err) as f_err:
        results.append({"rc": rc, "stdout": f_out.read(), "stderr": f_err.read()})
  return results


def main() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  for name in COMMANDS:
    importlib.import_module(f"rlp_jax.{name}")
  with open(sys.argv[1]) as f:
    cases = json.load(f)
  with open(sys.argv[2], "w") as f:
    json.dump(run_cases(cases), f)


if __name__ == "__main__":
  main()
