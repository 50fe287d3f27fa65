"""The quiet console (rlp_jax/infra/console.py): what is dropped, what passes through, the progress line."""

from __future__ import annotations

import io
import logging as pylogging
import os
import subprocess
import sys
import textwrap

from rlp_jax.infra import console


def test_native_start_up_lines_are_dropped_and_everything_else_passes(tmp_path):
  (tmp_path / "noisy_native.py").write_text(
    textwrap.dedent(
      """
      import os
      os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written ...\\n")
      os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. You may see ...\\n")
      os.write(2, b"a real warning the user must see\\n")
      """
    )
  )
  code = (
    "from rlp_jax.infra import console; "
    "console.import_quietly('noisy_native'); console.import_quietly('absent_mod')"
  )
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr == "a real warning the user must see\n"


def test_library_narration_stays_off_the_console_but_warnings_and_our_lines_do_not():
  def record(path, level, msg):
    return pylogging.LogRecord("absl", level, path, 1, msg, None, None)

  assert not console._quiet(record("/x/orbax/checkpoint_manager.py", pylogging.INFO, "saving"))
  assert not console._quiet(record("/x/clu/platform/local.py", pylogging.INFO, "Setting work unit notes"))
  assert console._quiet(record("/x/rlp_jax/training/loop.py", pylogging.INFO, "epoch 1: ..."))
  assert console._quiet(record("/x/orbax/checkpoint_manager.py", pylogging.WARNING, "disk full"))
  assert not console._quiet(
    record("/x/orbax/cm.py", pylogging.WARNING, "read_only=True, setting max_to_keep=None.")
  )


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_line_only_on_a_terminal_with_rate_and_an_eta_past_a_day(monkeypatch):
  clock = iter([0.0, 10.0])
  monkeypatch.setattr(console.time, "time", lambda: next(clock))
  terminal = _Terminal()
  line = console.ProgressLine(total_steps=1_000_000, every_steps=10, stream=terminal)
  line(10)
  line(15)  # not a multiple of every_steps: no clock read, no output
  line(20)
  assert "step 20/1000000 (0%)  1.0 steps/s  ETA 11d 13:46:20" in terminal.getvalue()
  piped = io.StringIO()
  console.ProgressLine(total_steps=100, every_steps=1, stream=piped)(1)
  assert piped.getvalue() == ""
