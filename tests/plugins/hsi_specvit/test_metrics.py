"""HSI metrics: OA / AA / kappa against hand-computed tables; the PNGs a person opens."""

from __future__ import annotations

import numpy as np
import pytest

from lowrank_vision.plugins.hsi_specvit.metrics import classification_metrics, save_class_map_png


@pytest.mark.parametrize(
    "y_true, y_pred, k, oa, aa, kappa",
    [
        ([0, 0, 1, 1], [0, 0, 1, 1], 2, 100.0, 100.0, 100.0),
        ([0, 0, 0, 1], [0, 0, 1, 1], 2, 75.0, (2 / 3 + 1) / 2 * 100, 50.0),
        ([0, 1, 2, 2, 2, 2], [0, 1, 2, 2, 2, 0], 3, 5 / 6 * 100, (1 + 1 + 0.75) / 3 * 100, None),
    ],
)
def test_metrics_table(y_true, y_pred, k, oa, aa, kappa):
    m = classification_metrics(np.array(y_true), np.array(y_pred), k)
    assert m["OA"] == pytest.approx(oa) and m["AA"] == pytest.approx(aa)
    c = np.array(m["confusion"])
    n = c.sum()
    pe = (c.sum(0) * c.sum(1)).sum() / n**2
    assert m["kappa"] == pytest.approx(100 * ((np.trace(c) / n - pe) / (1 - pe)) if kappa is None else kappa)
    with pytest.raises(ValueError, match="y_pred"):
        classification_metrics(np.array([0, 1]), np.array([0, 5]), 2)


def test_class_map_png_is_written_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    cmap = np.array([[0, 1], [2, 3]])
    path = save_class_map_png(cmap, tmp_path / "maps" / "m.png", 3, ground_truth=cmap, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["m.png"]  # no temporary file left behind
