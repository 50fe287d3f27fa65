r"""Resize a prepared tfds image dataset once, so that a host decodes fewer pixels every epoch:

  python -m rlp_jax.resize_dataset --dataset=imagenet2012 --data_dir=$TFDS --out_dir=$TFDS_256 \
      [--shorter_side=256] [--quality=95] [--workers=0]

then train with ``--config.data_dir=$TFDS_256``. Indices, random labels and every other feature stay as
they were; what changes and what it buys: data/resized_copy.py and docs/design.md §5. An interrupted copy
resumes when run again with the same flags.
"""

from __future__ import annotations

from absl import app, flags

from rlp_jax.infra import console, errors

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("dataset", "imagenet2012", "The prepared tfds dataset (JPEG images) to copy.")
  flags.DEFINE_string("data_dir", None, "tfds data_dir that holds it prepared.")
  flags.DEFINE_string("out_dir", None, "A new (empty) data_dir for the copy.")
  flags.DEFINE_integer(
    "shorter_side", 256, "Shorter side of the copy's images (the eval resize).", lower_bound=1
  )
  flags.DEFINE_integer(
    "quality", 95, "JPEG quality of the re-encoded images.", lower_bound=1, upper_bound=100
  )
  flags.DEFINE_integer(
    "workers", 0, "Processes writing shards in parallel (0 = one per core).", lower_bound=0
  )
  flags.mark_flags_as_required(["data_dir", "out_dir"])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup()
  from rlp_jax.data import resized_copy

  target = resized_copy.write(
    FLAGS.dataset,
    FLAGS.data_dir,
    FLAGS.out_dir,
    shorter_side=FLAGS.shorter_side,
    quality=FLAGS.quality,
    workers=FLAGS.workers,
  )
  print(f"written: {target}\ntrain on it with --config.data_dir={FLAGS.out_dir}", flush=True)


if __name__ == "__main__":
  define_flags()
  errors.run(main)
