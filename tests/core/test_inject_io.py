"""Target selection, bad input, multiple adapters, IO errors and PEFT interop."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from lowrank_vision.core import (
    AdapterFileError, adapter_layers, apply, export_peft, import_peft, load, merge, remove, save, set_active, unmerge,
)

from .cases import PeftNet, SmallConvNet, randomize_adapter


@pytest.mark.parametrize(
    "targets,expected",
    [
        (None, ["stem", "blocks.0.0", "blocks.1.0", "up", "head"]),
        ("blocks.*", ["blocks.0.0", "blocks.1.0"]),
        ("head", ["head"]),
        ("re:blocks\\.\\d\\.0", ["blocks.0.0", "blocks.1.0"]),
        (["stem", "head"], ["stem", "head"]),
        (nn.ConvTranspose2d, ["up"]),
        ((nn.Linear, nn.ConvTranspose2d), ["up", "head"]),
    ],
)
def test_target_selection(targets, expected):
    model = SmallConvNet()
    report = apply(model, "lora", rank=2, targets=targets)
    assert sorted(report.wrapped) == sorted(expected)


def test_trainable_patterns_and_report():
    model = SmallConvNet()
    total = sum(p.numel() for p in model.parameters())
    report = apply(model, "cp_lora", rank=4, targets="blocks.*", trainable=("head",))
    head = 8 * 3 + 3
    cp = 2 * 4 * (8 + 8 + 3 + 3)
    assert report.trainable_params == cp + head
    assert report.total_params == total + cp
    assert f"{report.trainable_percent:.3f}" in str(report)
    assert model.head.weight.requires_grad and not model.stem.weight.requires_grad


@pytest.mark.parametrize("rank", [0, -2, 2.5, True])
def test_bad_rank(rank):
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        apply(SmallConvNet(), "lora", rank=rank)


def test_unknown_method_lists_known():
    with pytest.raises(KeyError, match="known methods: .*cp_lora.*lora"):
        apply(SmallConvNet(), "lorax", rank=2)


def test_unmatched_targets_lists_candidates():
    with pytest.raises(ValueError, match="matched no adaptable layer.*close candidates: .*blocks"):
        apply(SmallConvNet(), "lora", rank=2, targets="block.*.conv")
    with pytest.raises(ValueError, match="matched no adaptable layer"):
        apply(SmallConvNet(), "lora", rank=2, targets=["stem", "nothere"])


def test_unknown_option_and_bad_trainable():
    with pytest.raises(TypeError, match="unknown option.*num_basis_a"):
        apply(SmallConvNet(), "nola", rank=2, num_basis=4)
    with pytest.raises(ValueError, match="trainable pattern 'heads'"):
        apply(SmallConvNet(), "lora", rank=2, trainable=("heads",))


def test_several_named_adapters():
    torch.manual_seed(0)
    model = SmallConvNet()
    x = torch.randn(2, 3, 8, 8)
    base = model(x).detach()
    apply(model, "lora", rank=2, adapter_name="a")
    randomize_adapter(model, seed=1)
    out_a = model(x).detach()
    apply(model, "cp_lora", rank=2, targets="blocks.*", adapter_name="b")
    with torch.no_grad():
        for adapter in adapter_layers(model, "b").values():
            for _, p in adapter.adapter_parameters():
                p.add_(0.5)
    out_ab = model(x).detach()
    set_active(model, "b")
    out_b = model(x).detach()
    assert all(p.requires_grad == (adapter.adapter_name == "b") for adapter in adapter_layers(model).values() for _, p in adapter.adapter_parameters())
    set_active(model, "a")
    torch.testing.assert_close(model(x), out_a)
    set_active(model, None)
    torch.testing.assert_close(model(x), base)
    set_active(model, ["a", "b"])
    torch.testing.assert_close(model(x), out_ab)
    assert not torch.allclose(out_b, out_a) and not torch.allclose(out_ab, out_a)
    merge(model)
    torch.testing.assert_close(model(x), out_ab, rtol=1e-5, atol=1e-5)
    unmerge(model)
    remove(model, "b")
    torch.testing.assert_close(model(x), out_a)
    with pytest.raises(ValueError, match="already has an adapter named 'a'"):
        apply(model, "lora", rank=2, targets="stem", adapter_name="a")
    with pytest.raises(ValueError, match="no adapter named"):
        set_active(model, "zzz")


def test_load_onto_other_architecture_names_layer(tmp_path):
    model = SmallConvNet(width=8)
    apply(model, "lora", rank=2)
    save(model, tmp_path)
    with pytest.raises(AdapterFileError, match="first mismatching layer 'stem'"):
        load(SmallConvNet(width=6), tmp_path)
    with pytest.raises(AdapterFileError, match="does not exist in this model"):
        load(nn.Sequential(nn.Linear(3, 3)), tmp_path)


def test_corrupt_and_truncated_files(tmp_path):
    model = SmallConvNet()
    apply(model, "dora", rank=2)
    save(model, tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFileError, match="corrupt or truncated"):
        load(SmallConvNet(), tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"format": "lowrank-vision-adap')
    with pytest.raises(AdapterFileError, match="corrupt or truncated"):
        load(SmallConvNet(), tmp_path)
    with pytest.raises(AdapterFileError, match="does not exist"):
        load(SmallConvNet(), tmp_path / "missing")


def test_save_is_atomic_no_temp_files_left(tmp_path):
    model = SmallConvNet()
    apply(model, "lora", rank=2)
    save(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["method"] == "lora" and len(config["fingerprint"]) == 64 and config["library_version"]


# -- PEFT interop ------------------------------------------------------------------------------
peft = pytest.importorskip("peft")


@pytest.mark.parametrize("method", ["lora", "lora_c", "dora"])
def test_export_to_peft_gives_same_outputs(method, tmp_path):
    torch.manual_seed(0)
    base = PeftNet()
    ours = copy.deepcopy(base)
    apply(ours, method, rank=3, alpha=6, targets=["conv", "fc"])
    randomize_adapter(ours)
    x = torch.randn(2, 3, 4, 4)
    expected = ours(x).detach()
    export_peft(ours, tmp_path)
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path))
    torch.testing.assert_close(peft_model(x), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("use_dora", [False, True])
def test_import_peft_trained_lora(use_dora, tmp_path):
    torch.manual_seed(0)
    base = PeftNet()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["conv", "fc"], use_dora=use_dora)
    peft_model = peft.get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * 0.2)
    x = torch.randn(2, 3, 4, 4)
    expected = peft_model(x).detach()
    peft_model.save_pretrained(str(tmp_path))
    ours = copy.deepcopy(base)
    import_peft(ours, tmp_path)
    torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-5)
    assert sorted(adapter_layers(ours, "default")) == ["conv", "fc"]


def test_export_peft_refuses_non_lora(tmp_path):
    model = PeftNet()
    apply(model, "cp_lora", rank=2, targets=["conv"])
    with pytest.raises(ValueError, match="only lora/lora_c/dora"):
        export_peft(model, tmp_path)


def test_remove_keep_merged_leaves_plain_adapted_model():
    torch.manual_seed(0)
    model = SmallConvNet()
    apply(model, "cp_dora", rank=2)
    randomize_adapter(model)
    x = torch.randn(2, 3, 8, 8)
    expected = model(x).detach()
    assert remove(model, keep_merged=True) == 5
    assert not adapter_layers(model) and type(model.stem) is nn.Conv2d
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    nera = SmallConvNet()
    apply(nera, "nera", rank=2)
    with pytest.raises(TypeError, match="cannot be merged"):
        remove(nera, keep_merged=True)
