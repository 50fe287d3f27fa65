"""The files of a run directory, for training and for every tool that reads or adds to it (docs/design.md §6).

A run directory (``--workdir``) holds::

  config.json      the run's config: written once, compared on every resumption
  metrics.jsonl    one JSON record per evaluation ({"step", "epoch", metric: value, ...})
  checkpoints/     Orbax checkpoints (training/checkpointing.py)
  summary.json     the final table, written when the run ends
  offline.jsonl, memorization.npz, ...   what the analysis tools add

Everything here is plain Python: no JAX, no TensorFlow, so the sweep and report tools stay light.
Writes of whole files are atomic (a temporary file, then ``os.replace``): a kill never leaves half a file.
Appends are one line each; a line cut short by a kill is skipped on reading, never fatal.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import warnings
from collections.abc import Iterable, Mapping

from rlp_jax.infra import configuration, model_registry
from rlp_jax.infra.errors import UserError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
OFFLINE_FILE = "offline.jsonl"  # the offline heads' curve (analysis/offline.py)
SUMMARY_FILE = "summary.json"


def atomic_write(path: str, data: str | bytes) -> None:
  """Writes ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_npz(path: str, arrays: Mapping) -> None:
  """``arrays`` as one compressed .npz, written like ``atomic_write``: the old file or the new one."""
  import io

  import numpy as np

  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  atomic_write(path, buf.getvalue())


# ----------------------------------------------------------------------------------------------------
# JSON lines
# ----------------------------------------------------------------------------------------------------


def read_jsonl(path: str) -> list[dict]:
  """Records of a JSONL file, in file order; [] when it does not exist.

  A line that is not valid JSON (the last one, cut short by a kill; or a damaged one) is skipped with a
  warning naming the file and line: the records around it are still returned, and the file is untouched.
  """
  if not os.path.exists(path):
    return []
  out = []
  with open(path, "rb") as f:  # bytes: a damaged line need not even be UTF-8
    for number, line in enumerate(f, 1):
      record = _record(line)
      if record is None and line.strip():
        warnings.warn(f"{path}:{number}: not a complete JSON record; skipped.", stacklevel=2)
      elif record is not None:
        out.append(record)
  return out


def _record(line: bytes) -> dict | None:
  """The JSON object on one line of a JSONL file, or None for a blank, torn or damaged line."""
  try:
    record = json.loads(line.decode("utf-8")) if line.strip() else None
  except (UnicodeDecodeError, json.JSONDecodeError):
    return None
  return record if isinstance(record, dict) else None


def append_jsonl(path: str, record: Mapping) -> None:
  """Appends one record as one line, flushed to disk (a result computed once is not lost to a kill).

  After a line cut short by a kill, the record starts on a line of its own: the fragment stays in the
  file as it was (read_jsonl skips it) and never swallows the new record.
  """
  torn = False
  if os.path.exists(path) and os.path.getsize(path):
    with open(path, "rb") as f:
      f.seek(-1, os.SEEK_END)
      torn = f.read(1) != b"\n"
  with open(path, "a") as f:
    f.write(("\n" if torn else "") + json.dumps(dict(record)) + "\n")
    f.flush()
    os.fsync(f.fileno())


def drop_records_after(path: str, step: int) -> int:
  """Removes the records with a ``step`` past ``step``; returns how many.

  A resumed run redoes that part and logs it again. Every other line stays as it was, a damaged one
  included: it is reported when read, never deleted. The file is rewritten only when there is something to
  drop, atomically.
  """
  if not os.path.exists(path):
    return 0
  with open(path, "rb") as f:  # bytes: a damaged line is kept byte for byte, UTF-8 or not
    lines = f.read().splitlines(keepends=True)
  kept = []
  for number, line in enumerate(lines, 1):
    record = _record(line)
    if record is None and line.strip():
      warnings.warn(f"{path}:{number}: not a complete JSON record; kept as it is.", stacklevel=2)
    if record is not None and isinstance(record.get("step"), int) and record["step"] > step:
      continue
    kept.append(line if line.endswith(b"\n") else line + b"\n")
  dropped = len(lines) - len(kept)
  if dropped:
    atomic_write(path, b"".join(kept))
  return dropped


def final_record(records: Iterable[Mapping], num_epochs: int) -> dict | None:
  """The record of the run's last epoch (``epoch >= num_epochs``), or None while the run is unfinished.

  The one meaning of "final" for every tool: a run killed at epoch 40 of 90 has no final record, and a
  report shows it as unfinished rather than presenting epoch 40 as the result.
  """
  final = [r for r in records if r.get("epoch", 0) >= num_epochs]
  return dict(final[-1]) if final else None


# ----------------------------------------------------------------------------------------------------
# The config of a run
# ----------------------------------------------------------------------------------------------------


def config_dict(config) -> dict:
  """A ConfigDict (or a plain mapping) as plain nested dicts, as it is stored in JSON."""
  return json.loads(config.to_json()) if hasattr(config, "to_json") else json.loads(json.dumps(config))


def read_json(path: str) -> dict:
  """A JSON file the user's run depends on; a damaged one is reported with its path, never replaced."""
  with open(path, "rb") as f:
    try:
      data = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise UserError(f"{path} is not valid JSON ({e}). Restore it, or use a new --workdir.") from None
  if not isinstance(data, dict):
    raise UserError(
      f"{path} holds a JSON {type(data).__name__}, not an object. Restore it, or use a new --workdir."
    )
  return data


def write_config_file(path: str, config) -> None:
  atomic_write(path, json.dumps(config_dict(config), indent=2))


def differences(saved, current, ignore: Iterable[str] = ()) -> list[str]:
  """Dotted keys whose values differ between two configs (ConfigDicts or their JSON), except ``ignore``."""
  a, b = configuration.flatten(config_dict(saved)), configuration.flatten(config_dict(current))
  skip = set(ignore)
  return [k for k in sorted(set(a) | set(b)) if k not in skip and a.get(k) != b.get(k)]


def override_flags(config, keys: Iterable[str]) -> str:
  """``--config.KEY=VALUE`` for ``keys`` of ``config`` (a ConfigDict or its JSON), as a shell takes them."""
  flat = configuration.flatten(config_dict(config))
  return " ".join(f"--config.{k}={_flag_value(flat.get(k))}" for k in keys)


def _flag_value(value) -> str:
  # What ml_collections' config flags parse back to the same value: strings as they are (quoted for the
  # shell: '' stays an empty string), bools as True/False, numbers in Python's notation.
  return shlex.quote(value) if isinstance(value, str) else repr(value)


def check_same(path: str, config, *, ignore: Iterable[str] = (), what: str, fix: str) -> None:
  """Refuses ``config`` if the config saved at ``path`` differs from it (outside ``ignore``).

  Mixing two settings in one directory (resuming a run with another λ, adding offline results of other
  settings to one curve) would splice two experiments into one result; the user meant a new directory
  or made a typo. Nothing is written either way. The saved config is read as ``load_config`` reads it
  (``migrate``d, missing keys at today's defaults), so an older run's file is compared in today's keys and
  the message names only real differences. ``{overrides}`` in ``fix`` becomes the ``--config.KEY=VALUE``
  flags that pass the saved values (every difference, not only the 8 the message shows).
  """
  if not os.path.exists(path):
    return
  saved = read_config(path)
  a, b = configuration.flatten(config_dict(saved)), configuration.flatten(config_dict(config))
  diffs = differences(a, b, ignore)
  if diffs:
    detail = ", ".join(f"config.{k}: saved {a.get(k)!r} vs now {b.get(k)!r}" for k in diffs[:8])
    more = f", and {len(diffs) - 8} more" if len(diffs) > 8 else ""
    raise UserError(f"{what} ({detail}{more}). {fix.replace('{overrides}', override_flags(a, diffs))}")


# Keys that configs written by earlier versions lack, or name differently, with the value that reproduces
# what those versions did where today's default would not (docs/design.md §6, "Old run directories").
def migrate(saved: Mapping) -> dict:
  """An older ``config.json``'s contents in today's keys, meaning what they meant when the run was trained.

  - ``rlp.norm`` (one bool for every layer) became ``rlp.norm_layers``: True -> 'all', False -> ''.
  - ``rlp.pool`` absent: the mean over every position (the only pooling before 'flatten' was added).
  - ``model.features_after_dropout`` absent: the MLP and the CNN sowed their features after their dropout
    then (True); the other models sow no dropped-out features (False).
  - ``rlp.loss_kernel`` absent: 'xla' (the only kernel then).
  - ``rlp.reg_normalization`` absent: 'per_example' (λ multiplied the mean -log(1 - p̂) then).
  - ``checkpoint_every_epochs`` became ``checkpoint.every_epochs``.
  A config written today passes through unchanged.
  """
  out = json.loads(json.dumps(dict(saved)))  # a deep copy: the caller's dict stays as read
  rlp, model = out.setdefault("rlp", {}), out.setdefault("model", {})
  if "norm" in rlp:
    norm = rlp.pop("norm")
    rlp.setdefault("norm_layers", "all" if norm else "")
  rlp.setdefault("pool", "mean")
  rlp.setdefault("loss_kernel", "xla")
  rlp.setdefault("reg_normalization", "per_example")
  if "features_after_dropout" not in model:
    spec = model_registry.known(model.get("name", "mlp"))
    model["features_after_dropout"] = bool(spec and spec.legacy_features_after_dropout)
  if "checkpoint_every_epochs" in out:
    out.setdefault("checkpoint", {}).setdefault("every_epochs", out.pop("checkpoint_every_epochs"))
  return out


def read_config(path: str):
  """A saved config file (``config.json``, ``offline.config.json``), ``migrate``d, on top of today's defaults.

  Keys added since take their defaults, which reproduce what the run did. The config comes back unlocked.
  """
  config = configuration.base_config()
  try:
    _merge(config, migrate(read_json(path)))
  except (TypeError, ValueError, AttributeError) as e:  # a section that is not a section, a wrong type
    raise UserError(
      f"{path} does not hold a config of this project ({type(e).__name__}: {e}). Restore it (a copy of a "
      f"run's config.json is kept as {CONFIG_BACKUP} beside it), or use a new --workdir."
    ) from None
  return config


def load_config(workdir: str):
  """The config a run was trained with (``DIR/config.json``, read by ``read_config``), locked."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise UserError(
      f"{path} does not exist: --workdir must be the directory of a run trained by rlp_jax.main "
      "(it writes config.json, metrics.jsonl and checkpoints/ there)."
    )
  config = read_config(path)
  config.lock()
  return config


def _merge(base, saved: Mapping) -> None:
  for k, v in saved.items():
    if isinstance(v, Mapping) and k in base and hasattr(base[k], "items"):
      _merge(base[k], v)
    else:
      base[k] = v


LOCK_FILE = ".lock"
# A copy of config.json, written with it: what restores it when it is lost
# (checkpointing.check_same_experiment).
CONFIG_BACKUP = ".config.json"


def log_path(workdir: str, command: str) -> str:
  """Where a command's full log goes: ``WORKDIR/logs/<command>.log`` (the console shows a quiet subset)."""
  return os.path.join(workdir, "logs", f"{command}.log")


def check_workdir(workdir: str) -> None:
  """A workdir is a directory, or does not exist yet."""
  if "://" not in workdir and os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir} is a file, not a directory; name a directory for this run.")


@contextlib.contextmanager
def lock(workdir: str, *, enabled: bool = True, name: str = LOCK_FILE, what: str = ""):
  """Holds the workdir for one process: a second training process on it is refused while the first lives.

  An advisory ``flock`` on ``WORKDIR/.lock``: the kernel drops it when its process dies, however it dies
  (SIGKILL included), so a killed run never leaves its workdir stuck. Cloud paths (``gs://``) have no
  locks; there the launcher is what keeps one job per workdir. The analysis commands that write into a run
  directory hold a lock of their own (``name``, e.g. ``.offline.jsonl.lock``), so they may read a run that
  is still training but two of them never append to one file; ``what`` says what they would write.
  """
  if not enabled or "://" in workdir:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, name)
  f = open(path, "a+")  # noqa: SIM115 - held for the whole run
  try:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      raise UserError(
        f"--workdir={workdir} is in use by {holder}: two processes would write "
        f"{what or 'the same checkpoints and logs'}. Wait for it to finish (or stop it), or use another "
        + ("--output." if what else "--workdir.")
      ) from None
    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    yield
  finally:
    f.close()  # releases the lock
