"""What I/O costs a training step: writing a checkpoint in the background, and feeding batches.

Both are measured in one process, side by side, so their ratios are comparable (absolute CPU times say
little):

- ``save_cost``: step time over ``steps`` steps while an asynchronous resume checkpoint of the state is
  being written, against the same number of steps with none in flight — the cost of an epoch that saves
  against one that does not (training/checkpointing.py);
- ``prefetch_gain``: steps fed by the real input pipeline with device prefetch (``size`` batches ahead,
  training/experiment.device_batches) against transferring each batch only when the step asks for it.
"""

from __future__ import annotations

import os
import tempfile
import time

import jax

from rlp_jax.data import input_pipeline
from rlp_jax.perf import benchmark
from rlp_jax.training import checkpointing
from rlp_jax.training import experiment as experiment_lib
from rlp_jax.training.steps import make_train_step


def save_cost(config, *, steps: int = 20, repeats: int = 3) -> dict[str, float]:
  config = config.copy_and_resolve_references()
  config.checkpoint.async_save = True
  experiment, state = experiment_lib.build(config, benchmark.data_info(config))
  batch = benchmark.synthetic_batch(experiment)
  train_step = make_train_step(experiment)
  for _ in range(2):
    state = train_step(state, batch)
  jax.block_until_ready(state)
  times: dict[bool, list[float]] = {False: [], True: []}
  with tempfile.TemporaryDirectory() as workdir:
    ckpt = checkpointing.Checkpoints(workdir, config)
    for r in range(repeats):
      for saving in (False, True):  # interleaved, so drift in machine load hits both alike
        t0 = time.perf_counter()
        if saving:
          ckpt.save_resume(r, state)  # returns once the arrays are off the devices
        for _ in range(steps):
          state = train_step(state, batch)
        jax.block_until_ready(state)
        times[saving].append((time.perf_counter() - t0) / steps)
        ckpt.wait()
    written = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(workdir) for f in fs) / repeats
    ckpt.close()
  quiet, saving = min(times[False]), min(times[True])
  return {
    "step_s": quiet,
    "step_s_while_saving": saving,
    "ratio": saving / quiet,
    "checkpoint_bytes": written,
  }


def prefetch_gain(config, *, num_batches: int = 50, size: int = 2) -> dict[str, float]:
  experiment, state = experiment_lib.build(config)
  train_step = make_train_step(experiment)
  n = min(num_batches, experiment.steps_per_epoch)

  def run(ahead: int, epoch: int) -> float:
    nonlocal state
    batches = input_pipeline.train_batches(config, experiment.info, epoch)
    first = next(batches)  # pipeline start-up and compilation are not throughput
    state = train_step(state, experiment_lib.device_batch(experiment, first))
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for i, batch in enumerate(experiment_lib.device_batches(experiment, batches, ahead)):
      if i == n - 1:
        break
      state = train_step(state, batch)
    jax.block_until_ready(state)
    return (time.perf_counter() - t0) / (n - 1)

  without, with_ = [], []
  for epoch in range(2):
    without.append(run(0, epoch))
    with_.append(run(size, epoch))
  return {
    "step_s_no_prefetch": min(without),
    "step_s_prefetch": min(with_),
    "ratio": min(with_) / min(without),
  }
