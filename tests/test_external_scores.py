"""analysis/external_scores.py: an external file is aligned by index and its order checked by labels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from rlp_jax.analysis import external_scores, scores


def test_external_scores_are_aligned_by_index_and_order_is_checked_by_labels(tmp_path, synthetic_scores):
  data = synthetic_scores
  ours = scores.score(data)
  m = len(ours)
  rng = np.random.default_rng(1)
  theirs = 2 * np.nan_to_num(ours) + rng.normal(scale=0.3, size=m)  # related, not identical
  perm = rng.permutation(m)  # the file lists examples in another order, with an index column
  path = str(tmp_path / "external.npz")
  np.savez(path, index=perm, tr_mem=theirs[perm], tr_labels=data["label"][perm])
  index, score, ext_labels = external_scores.load_external(path, "tr_mem", "tr_labels")
  out = external_scores.correlate_external(data, ours, index, score, ext_labels)
  ok = np.arange(m) != 5
  assert out["spearman"] == pytest.approx(stats.spearmanr(ours[ok], theirs[ok]).statistic)
  assert out["label_agreement"] == 1.0 and out["num_examples"] == m - 1

  # The same scores in index order without an index array (Feldman-Zhang style) give the same result ...
  np.savez(path, tr_mem=theirs, tr_labels=data["label"])
  index, score, ext_labels = external_scores.load_external(path, "tr_mem", "tr_labels")
  assert (
    external_scores.correlate_external(data, ours, index, score, ext_labels)["spearman"] == out["spearman"]
  )
  # ... and a CSV keyed by index too.
  csv_path = tmp_path / "external.csv"
  csv_path.write_text("index,score,label\n" + "".join(f"{i},{theirs[i]},{data['label'][i]}\n" for i in perm))
  index, score, ext_labels = external_scores.load_external(str(csv_path))
  assert external_scores.correlate_external(data, ours, index, score, ext_labels)[
    "spearman"
  ] == pytest.approx(out["spearman"])
  # A file in another order (its labels disagree) is refused before correlating.
  np.savez(path, tr_mem=theirs[perm], tr_labels=data["label"][perm])
  with pytest.raises(ValueError, match="order"):
    external_scores.correlate_external(
      data, ours, *external_scores.load_external(path, "tr_mem", "tr_labels")
    )
