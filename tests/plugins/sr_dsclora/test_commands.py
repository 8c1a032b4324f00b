"""commands.demo: figure + summary on one photo (fast); the full demo reproduces the shipped weights' recorded scores (slow)."""

import pytest
import torch

from lowrank_vision.plugins.sr_dsclora import PLUGIN, commands
from lowrank_vision.plugins.sr_dsclora.weights import checkpoint_extra, default_weights

torch.set_num_threads(2)


def _check_figure_and_summary(result, tmp_path):
    (figure,) = result["figures"]
    assert figure["path"].startswith(str(tmp_path)) and open(figure["path"], "rb").read(4) == b"\x89PNG"
    assert "SPAN" in figure["caption"] and "astronaut" in figure["caption"]
    assert "DSCLoRA" in result["summary"] and f"{result['dsclora_psnr']:.3f} dB" in result["summary"]


def test_demo_on_one_photo(tmp_path, monkeypatch):
    one_photo = commands.load_eval_set(None, 4)[:1]
    monkeypatch.setattr(commands, "load_eval_set", lambda source, scale: one_photo)
    result = PLUGIN.demo(tmp_path, "cpu")
    assert result["eval_images"] == ["astronaut"] and result["span_params"] == result["dsclora_params"] == 130_828
    assert result["bicubic_psnr"] == pytest.approx(27.04, abs=0.01)  # docs/results/sr.md, per-image table
    assert result["span_psnr"] == pytest.approx(28.876, abs=2e-3)  # docs/results/sr_gpu/report.json, teacher_l2 per image
    assert result["dsclora_psnr"] > result["span_psnr"] > result["bicubic_psnr"] + 1.0
    _check_figure_and_summary(result, tmp_path)


@pytest.mark.slow
def test_demo_reproduces_the_recorded_scores(tmp_path):
    result = PLUGIN.demo(tmp_path, "cpu")
    assert result["eval_images"] == ["astronaut", "chelsea", "coffee", "china", "flower"]
    for kind in ("span", "dsclora"):  # the numbers stored by the command that made the weights come back
        assert result[f"{kind}_psnr"] == pytest.approx(checkpoint_extra(default_weights(kind, 4))["eval_psnr"], abs=2e-3)
    assert result["span_psnr"] > result["bicubic_psnr"] + 0.5 and result["dsclora_psnr"] > result["span_psnr"]
    assert result["bicubic_psnr"] == pytest.approx(27.872, abs=1e-3)
    _check_figure_and_summary(result, tmp_path)
