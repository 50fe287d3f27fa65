"""analysis/image_grid.py: the most and least memorized examples per class, and their mosaic."""

from __future__ import annotations

import os

import numpy as np

from rlp_jax.analysis import image_grid, scores


def test_select_per_class_and_image_grid(tmp_path, synthetic_scores):
  data = synthetic_scores
  values = scores.score(data)
  sel = image_grid.select_per_class(values, data["label"], k=3)
  assert sorted(sel) == [0, 1, 2]
  for c, (most, least) in sel.items():
    members = [i for i in range(60) if data["label"][i] == c and i != 5]
    ranked = sorted(members, key=lambda i: -values[i])
    assert list(most) == ranked[:3] and list(least) == ranked[::-1][:3]
    assert 5 not in most and 5 not in least  # unscored examples are never shown
  images = np.random.default_rng(0).uniform(size=(60, 8, 8, 1))
  path = str(tmp_path / "grid.png")
  mosaic = image_grid.save_image_grid(path, images, sel, values, title="test")
  assert os.path.getsize(path) > 1000 and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert mosaic.shape == (3 * 9, 2 * 3 * 9 + 4, 3)
  # The first tile of row 0 is the most memorized example of class 0 (min-max scaled).
  tile = images[sel[0][0][0], ..., 0]
  np.testing.assert_allclose(mosaic[:8, :8, 0], (tile - tile.min()) / (tile.max() - tile.min()), rtol=1e-6)
