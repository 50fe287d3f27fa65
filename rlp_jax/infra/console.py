"""What the commands print while they work: a quiet console, the details in a log file (docs/design.md §6).

The console gets our own lines (one per epoch, the progress line, the final table) and every warning; the
libraries' narration (Orbax on each file it touches, tfds on each dataset it opens, JAX on backends it did
not find, clu on each progress report) goes only to the training log, ``WORKDIR/logs/train.log`` (local
workdirs; the analysis commands keep the console alone).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging as pylogging
import os
import sys
import tempfile
import time

from absl import logging

# Loggers whose INFO lines are narration: kept out of the console, kept in the log file.
_CHATTY = ("orbax", "tensorflow_datasets", "jax/_src", "jax._src", "absl/logging", "clu/", "etils")
_CONSOLE_FORMAT = "%(asctime)s %(message)s"
_FILE_FORMAT = "%(asctime)s %(levelname).1s %(name)s %(filename)s:%(lineno)d] %(message)s"


# Warnings that describe what we asked for (opening checkpoints read-only for analysis), not a problem.
_EXPECTED_WARNINGS = ("read_only=True, setting", "Given directory is read only")


def _quiet(record: pylogging.LogRecord) -> bool:
  if record.levelno >= pylogging.WARNING:
    return not any(m in str(record.msg) for m in _EXPECTED_WARNINGS)
  return not any(m in record.pathname for m in _CHATTY)


class _ConsoleFormatter(pylogging.Formatter):
  """A logged exception shows as its message line on the console, without the traceback.

  On a full disk Orbax's save threads log one per file they could not write (dozens), while the command
  ends with one ``error:`` line. The traceback stays in WORKDIR/logs/train.log (the record itself is not
  changed).
  """

  def format(self, record: pylogging.LogRecord) -> str:
    saved = record.exc_info, record.exc_text, record.stack_info
    record.exc_info = record.exc_text = record.stack_info = None
    try:
      return super().format(record)
    finally:
      record.exc_info, record.exc_text, record.stack_info = saved


def setup() -> None:
  """INFO for our lines on the console, time-stamped, without absl's thread and file columns."""
  logging.set_verbosity(logging.INFO)
  handler = logging.get_absl_handler()
  handler.setFormatter(_ConsoleFormatter(_CONSOLE_FORMAT, "%H:%M:%S"))
  handler.addFilter(_quiet)


class _QuietFileHandler(pylogging.FileHandler):
  """The training log on disk; a line it cannot write (a full or vanished disk) is dropped.

  The log is a copy of what the libraries narrate, and the logging module's default would print a traceback
  per line on the console, dozens of them before the one error line that says the disk is full (issue 23).
  """

  def handleError(self, record) -> None:  # noqa: N802 - the logging module's name
    del record

  def flush(self) -> None:
    try:
      super().flush()
    except OSError:
      pass

  def close(self) -> None:
    try:
      super().close()
    except OSError:
      pass


@contextlib.contextmanager
def log_file(path: str, *, enabled: bool = True):
  """Everything at INFO and above also goes to ``path`` while the block runs.

  Local paths only: a ``gs://`` workdir keeps the console. Opened only once the workdir is known to be ours
  to write.
  """
  if not enabled or "://" in path:
    yield
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  handler = _QuietFileHandler(path)
  handler.setFormatter(pylogging.Formatter(_FILE_FORMAT))
  root = pylogging.getLogger()
  # Called from Python rather than a command, the console is whatever handler the process has (often a
  # basicConfig stderr handler): it gets the commands' policy too while the root logs at INFO, so the
  # libraries' narration goes to the file only (issue 22: 196 lines of Orbax and tfds otherwise).
  quieted = [h for h in root.handlers if _quiet not in h.filters]
  for h in quieted:
    h.addFilter(_quiet)
  root.addHandler(handler)
  level = root.level
  root.setLevel(min(level, pylogging.INFO))
  try:
    yield
  finally:
    root.removeHandler(handler)
    root.setLevel(level)
    for h in quieted:
      h.removeFilter(_quiet)
    handler.close()


def _duration(seconds: float) -> str:
  """``1d 02:03:04`` or ``02:03:04``: runs longer than a day are common on ImageNet."""
  minutes, secs = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  days, hours = divmod(hours, 24)
  return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"


class ProgressLine:
  """``step 15/44 (34%)  116 steps/s  ETA 0:00:12`` rewritten in place on a terminal.

  Nothing when the output is a file or a pipe (a batch job's log keeps one line per epoch).
  """

  def __init__(self, total_steps: int, every_steps: int, stream=None):
    self._total, self._every = total_steps, max(1, every_steps)
    self._stream = stream or sys.stderr
    self._on = self._stream.isatty()
    self._last: tuple[int, float] | None = None

  def __call__(self, step: int) -> None:
    if not self._on or step % self._every:
      return
    now = time.time()
    if self._last is not None and now > self._last[1]:
      rate = (step - self._last[0]) / (now - self._last[1])
      eta = _duration((self._total - step) / rate) if rate > 0 else "?"
      self._stream.write(
        f"\rstep {step}/{self._total} ({step / self._total:.0%})  {rate:.1f} steps/s  ETA {eta}   "
      )
      self._stream.flush()
    self._last = (step, now)

  def clear(self) -> None:
    """Before a full line (an epoch's metrics) is logged over it."""
    if self._on and self._last is not None:
      self._stream.write("\r" + " " * 70 + "\r")
      self._stream.flush()


# What TensorFlow's C++ side prints on import whatever TF_CPP_MIN_LOG_LEVEL says (TF 2.21): not for users.
_NATIVE_NOISE = (
  "All log messages before absl::InitializeLog() is called",
  "oneDNN custom operations are on",
  "cpu_feature_guard.cc",
  "This TensorFlow binary is optimized",
  "To enable the following instructions",
)


def import_quietly(module: str) -> None:
  """Imports ``module`` with the C++ start-up lines above dropped from stderr.

  Anything else it prints (a real warning, an import error's message) is passed through.
  """
  if module in sys.modules or importlib.util.find_spec(module) is None:
    return  # absent (a GPU image with synthetic data only): whoever really needs it fails on import
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      importlib.import_module(module)
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode(errors="replace").splitlines(keepends=True):
        if not any(noise in line for noise in _NATIVE_NOISE):
          sys.stderr.write(line)
      sys.stderr.flush()
