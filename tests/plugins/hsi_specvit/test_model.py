"""LoLA-SpecViT: timm registration on plugin import, refused options, parameter counts, masked window attention,
LoRA via core.apply, cyclical scale, configs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import lowrank_vision.core as core
import lowrank_vision.plugins.hsi_specvit  # noqa: F401  (registers the timm variants)
import lowrank_vision.plugins.hsi_specvit.model as hsi_model
from lowrank_vision.plugins.hsi_specvit.config import DataConfig, RecipeConfig, SpecViTConfig, train_config
from lowrank_vision.plugins.hsi_specvit.model import HybridSN, WindowAttention
from lowrank_vision.plugins.hsi_specvit.schedule import CyclicalLoRAScale, cycle_factor
from lowrank_vision.plugins.hsi_specvit.weights import baked_state_dict

timm = pytest.importorskip("timm")

LORA_TARGETS = list(RecipeConfig().targets)

# (variant, in_chans, num_classes, total parameters: counted once and frozen here as a regression check)
VARIANT_CASES = [
    ("lola_specvit_tiny", 15, 8, 321_396),
    ("lola_specvit_small", 15, 8, 3_547_508),
]


@pytest.mark.parametrize("name, in_chans, num_classes, total", VARIANT_CASES)
def test_timm_create_model(name, in_chans, num_classes, total):
    torch.manual_seed(0)
    m = timm.create_model(name, in_chans=in_chans, num_classes=num_classes)
    assert name in timm.list_models("lola_specvit*")
    p = m.cfg.img_size
    y = m(torch.randn(2, in_chans, p, p))
    assert y.shape == (2, num_classes)
    assert sum(q.numel() for q in m.parameters()) == total
    assert m.get_classifier() is m.head
    m.reset_classifier(3)
    assert m(torch.randn(1, in_chans, p, p)).shape == (1, 3)


def test_head_parameter_formula():
    a = timm.create_model("lola_specvit_tiny", in_chans=15, num_classes=8)
    b = timm.create_model("lola_specvit_tiny", in_chans=15, num_classes=9)
    assert sum(p.numel() for p in b.parameters()) - sum(p.numel() for p in a.parameters()) == a.num_features + 1


def test_wrong_band_count_is_a_clear_error():
    m = timm.create_model("lola_specvit_tiny", in_chans=15, num_classes=4)
    with pytest.raises(ValueError, match="in_chans=15"):
        m(torch.randn(1, 12, 9, 9))
    with pytest.raises(KeyError, match="variant"):
        hsi_model.create_lola_specvit("lola_specvit_huge")


def test_window_attention_ignores_padding_tokens():
    torch.manual_seed(0)
    attn = WindowAttention(dim=8, num_heads=2, window_size=3).eval()
    x = torch.randn(1, 9, 8)
    mask = torch.zeros(1, 9, dtype=torch.bool)
    mask[0, 5:] = True
    y1 = attn(x, mask)
    x2 = x.clone()
    x2[0, 5:] = 100.0 * torch.randn(4, 8)
    y2 = attn(x2, mask)
    assert torch.allclose(y1[0, :5], y2[0, :5], atol=1e-5)
    assert not torch.allclose(attn(x2)[0, :5], y1[0, :5], atol=1e-3)  # without the mask they would leak


def test_odd_patch_sizes_run():
    m = timm.create_model("lola_specvit_tiny", in_chans=6, num_classes=3, img_size=11)
    assert m(torch.randn(2, 6, 11, 11)).shape == (2, 3)
    assert m(torch.randn(2, 6, 7, 7)).shape == (2, 3)  # position embedding resampled


def test_lora_via_core_apply_counts_and_merge():
    torch.manual_seed(0)
    m = timm.create_model("lola_specvit_tiny", in_chans=15, num_classes=8).eval()
    full = sum(p.numel() for p in m.parameters())
    report = core.apply(m, "lora", rank=8, alpha=16, targets=LORA_TARGETS, trainable=("head", "norm"))
    assert len(report.wrapped) == 20  # 4 blocks x (qkv, proj, fc1, fc2) + spectral_proj + 3 front-end Conv3d
    assert report.trainable_params <= 0.2 * full  # >= 80% fewer trainable parameters than full fine-tuning
    layers = [mod for mod in m.modules() if isinstance(mod, core.AdapterLayer)]
    assert all(mod.scale == pytest.approx(2.0) for mod in layers)
    for n, p in m.named_parameters():  # give B non-zero values so the adapter changes the output
        if p.requires_grad and "head" not in n and "norm" not in n:
            torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(4, 15, 9, 9)
    with torch.no_grad():
        y = m(x)
        core.merge(m)
        y_merged = m(x)
        core.unmerge(m)
        plain = timm.create_model("lola_specvit_tiny", in_chans=15, num_classes=8).eval()
        plain.load_state_dict(baked_state_dict(m))
        y_baked = plain(x)
    assert torch.allclose(y, y_merged, atol=1e-4) and torch.allclose(y, y_baked, atol=1e-4)


@pytest.mark.parametrize(
    "step, expected",
    [(0, 0.25), (20, 0.625), (39, 0.25 + 0.75 * 0.5 * (1 - torch.cos(torch.tensor(torch.pi * 39 / 40)).item())),
     (40, 0.25), (80, 0.625), (120, 0.25)],
)
def test_cycle_factor_table(step, expected):
    # cycles of 40, 80, 160 steps (T_0 = 40, T_mult = 2); each ramps 0.25 -> 1
    assert cycle_factor(step, 40, 2.0, 0.25) == pytest.approx(expected, abs=1e-6)


def test_last_cycle_is_cut_to_end_at_full_strength():
    # T_0 = 40, T_mult = 2: cycles [0, 40), [40, 120), [120, 280) -> cut to [120, 200) for a 200-step run
    assert cycle_factor(160, 40, 2.0, 0.5, total_steps=200) == pytest.approx(0.75)
    assert cycle_factor(200, 40, 2.0, 0.5, total_steps=200) == pytest.approx(1.0)
    assert cycle_factor(200, 40, 2.0, 0.5) < 0.9  # without the cut the run would end mid-cycle


def test_cyclical_callback_sets_and_restores_scale():
    m = timm.create_model("lola_specvit_tiny", in_chans=15, num_classes=8)
    with pytest.raises(ValueError, match="no adapter layer"):
        CyclicalLoRAScale().attach(m)
    core.apply(m, "lora", rank=4, alpha=8, targets=LORA_TARGETS)
    cb = CyclicalLoRAScale(cycle_steps=10, cycle_mult=1.0, f_min=0.0).attach(m)
    layers = [mod for mod in m.modules() if isinstance(mod, core.AdapterLayer)]
    assert all(mod.scale == 0.0 for mod in layers)
    metrics = {}
    cb(5, m, metrics)
    assert metrics["lora_scale_factor"] == pytest.approx(0.5)
    assert all(mod.scale == pytest.approx(1.0) for mod in layers)  # nominal 8/4 = 2, times 0.5
    cb.finish(m)
    assert all(mod.scale == pytest.approx(2.0) for mod in layers)
    with pytest.raises(ValueError, match="f_min"):
        CyclicalLoRAScale(f_min=1.5)


def test_hybridsn_baseline_shapes():
    m = HybridSN(in_chans=15, num_classes=8, img_size=9)
    assert m(torch.randn(3, 15, 9, 9)).shape == (3, 8)
    few = HybridSN(in_chans=3, num_classes=2, img_size=9)  # few-band rasters shrink the spectral kernels
    assert few(torch.randn(1, 3, 9, 9)).shape == (1, 2)


def _python(code: str) -> list[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()


def test_plugin_import_is_cheap_and_registers_with_timm():
    # importing the plugin loads neither torch, timm nor rasterio ...
    out = _python("import sys; from lowrank_vision.plugins.hsi_specvit import PLUGIN; "
                  "print(PLUGIN.app, 'timm' in sys.modules, 'torch' in sys.modules, 'rasterio' in sys.modules)")
    assert out == ["lowrank-hsi", "False", "False", "False"]
    # ... yet it is enough for timm.create_model, whether timm is imported after the plugin or before it
    for first, second in (("lowrank_vision.plugins.hsi_specvit", "timm"), ("timm", "lowrank_vision.plugins.hsi_specvit")):
        out = _python(f"import {first}, {second}, timm; m = timm.create_model('lola_specvit_tiny', in_chans=6, num_classes=3); "
                      "print(type(m).__name__, m.num_classes, len(timm.list_models('lola_specvit*')))")
        assert out == ["LoLASpecViT", "3", "3"], (first, out)


def test_plugin_imports_without_timm():
    code = ("import sys; sys.modules['timm'] = None; "  # timm not installed
            "import lowrank_vision.plugins.hsi_specvit as p; print(p.PLUGIN.name, p.PLUGIN.demo is not None)")
    assert _python(code) == ["hsi_specvit", "True"]


@pytest.mark.parametrize("options, error, match", [
    ({"features_only": True}, ValueError, "features_only=True is not supported"),
    ({"drop_path_rate": 0.1}, ValueError, "drop_path_rate is not supported"),
    ({"global_pool": "max"}, ValueError, "global_pool must be 'avg'"),
    ({"out_indices": (1, 2)}, TypeError, r"unexpected option\(s\) \['out_indices'\]"),
])
def test_unsupported_timm_options_raise(options, error, match):
    with pytest.raises(error, match=match):
        timm.create_model("lola_specvit_tiny", **options)


def test_supported_timm_options_are_honoured():
    m = timm.create_model("lola_specvit_tiny", drop_rate=0.2, drop_path_rate=None, global_pool="avg", dtype=torch.float64)
    assert m.cfg.drop_rate == 0.2 and m.head.weight.dtype == torch.float64
    assert m.pretrained_cfg["input_size"] == (15, 9, 9)
    with pytest.raises(ValueError, match="global_pool"):
        m.reset_classifier(3, global_pool="max")


@pytest.mark.parametrize("make, match", [
    (lambda: SpecViTConfig(in_chans=0), r"SpecViTConfig.in_chans must be an int >= 1, got 0"),
    (lambda: SpecViTConfig(num_heads=(5, 4)), r"SpecViTConfig.num_heads must be divisors of the stage widths"),
    (lambda: DataConfig(patch=8), r"DataConfig.patch must be an odd int >= 1, got 8"),
    (lambda: DataConfig(fractions=(0.5, 0.5, 0.5)), r"DataConfig.fractions must be 3 non-negative numbers"),
    (lambda: RecipeConfig(method="svd"), r"RecipeConfig.method must be one of \('lora', 'full', 'hybridsn', 'svm', 'rf'\), got 'svd'"),
    (lambda: RecipeConfig(model="lola_specvit_huge"), r"RecipeConfig.model must be one of"),
    (lambda: RecipeConfig(rank=0), r"RecipeConfig.rank must be an int >= 1, got 0"),
    (lambda: RecipeConfig(label_smoothing=1.0), r"RecipeConfig.label_smoothing must be in \[0, 1\), got 1.0"),
    (lambda: RecipeConfig(train=train_config(steps=0)), r"TrainConfig.max_steps must be an int >= 1, got 0"),
    (lambda: DataConfig(split="random"), r"DataConfig.split must be one of \('regions', 'checkerboard', 'masks'\), got 'random'"),
    (lambda: DataConfig(split="masks"), r"DataConfig.train_mask must be a file with split='masks', got None"),
    (lambda: DataConfig(reduction="ica"), r"DataConfig.reduction must be 'pca' or 'mnf', got 'ica'"),
    (lambda: RecipeConfig(class_weighting="inverse"), r"RecipeConfig.class_weighting must be 'none' or 'sqrt_inverse'"),
])
def test_config_errors_name_class_and_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_recipe_train_config_defaults_follow_the_method():
    assert RecipeConfig().train.lr == 5e-3 and RecipeConfig(method="full").train.lr == 2e-3
    t = RecipeConfig(method="hybridsn", train=train_config("hybridsn", steps=4, seed=3)).train
    assert (t.max_steps, t.warmup_steps, t.lr, t.seed, t.weight_decay) == (4, 3, 2e-3, 3, 0.01)


def test_on_import_runs_the_hook_after_the_host_and_never_breaks_it(tmp_path, monkeypatch):
    from lowrank_vision.plugins._on_import import on_import

    (tmp_path / "fake_host_ok.py").write_text("VALUE = 41\n")
    (tmp_path / "fake_host_bad.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    calls = []
    on_import("fake_host_ok", lambda: calls.append(sys.modules["fake_host_ok"].VALUE + 1))
    on_import("fake_host_bad", lambda: 1 / 0)
    assert calls == []  # nothing imported yet
    import fake_host_ok  # noqa: F401

    assert calls == [42]
    with pytest.warns(RuntimeWarning, match="registration with fake_host_bad failed"):
        import fake_host_bad
    assert fake_host_bad.VALUE == 1
    on_import("fake_host_ok", lambda: calls.append("now"))  # already imported: runs at once
    assert calls == [42, "now"]
    for name in ("fake_host_ok", "fake_host_bad"):
        monkeypatch.delitem(sys.modules, name)
