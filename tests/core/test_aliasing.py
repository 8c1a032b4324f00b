"""Models that reach one module under two names (shared submodules, tied weights).

Each module is wrapped once and every name points to that one wrapper; ``save`` writes each
adapter once (the aliases go into the config) and ``load`` puts it back onto every alias.
Checked on a hand-made network, on MONAI's DynUNet (its ``skip_layers`` re-register the encoder
and decoder blocks) and on a tied-embedding transformer built locally.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lowrank_vision.core import AdapterLayer, adapter_layers, apply, load, merge, remove, save

from .cases import randomize_adapter


class SharedNet(nn.Module):
    """A block registered twice, a Linear registered twice, and a plain head."""

    def __init__(self):
        super().__init__()
        block = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())
        self.first = block
        self.again = block
        self.proj = nn.Linear(3, 3)
        self.proj_alias = self.proj
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        y = self.again(self.first(x)).mean((2, 3))
        return self.head(self.proj_alias(self.proj(y)))


def unique_adapters(model: nn.Module) -> list[AdapterLayer]:
    return list({id(a): a for a in adapter_layers(model).values()}.values())


@pytest.mark.parametrize("method", ["lora", "dora", "cp_lora", "nola", "nera"])
def test_shared_modules_wrapped_once_saved_once_loaded_onto_every_alias(method, tmp_path):
    torch.manual_seed(0)
    model = SharedNet()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 6, 6)
    apply(model, method, rank=2)
    assert model.first[0] is model.again[0] and isinstance(model.first[0], AdapterLayer)
    assert model.proj is model.proj_alias and isinstance(model.proj, AdapterLayer)
    assert len(unique_adapters(model)) == 3
    randomize_adapter(model)
    expected = model(x).detach()
    save(model, tmp_path / "a")
    keys = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert sorted({k.split(".")[0] for k in keys}) == ["first", "head", "proj"]
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["aliases"] == {"again.0": "first.0", "proj_alias": "proj"}

    fresh = SharedNet()
    fresh.load_state_dict(state)
    load(fresh, tmp_path / "a")
    assert fresh.first[0] is fresh.again[0] and fresh.proj is fresh.proj_alias
    assert len(unique_adapters(fresh)) == 3
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)
    assert remove(fresh) == 3
    assert type(fresh.proj) is nn.Linear and fresh.proj is fresh.proj_alias and fresh.first is fresh.again
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_target_naming_one_alias_wraps_all(tmp_path):
    model = SharedNet()
    report = apply(model, "lora", rank=2, targets=["proj"])
    assert model.proj is model.proj_alias and isinstance(model.proj_alias, AdapterLayer)
    assert report.adapter_params == 2 * (3 + 3)


def test_load_refuses_a_model_without_the_saved_aliases(tmp_path):
    model = SharedNet()
    apply(model, "lora", rank=2)
    save(model, tmp_path / "a")

    class Unshared(SharedNet):
        def __init__(self):
            super().__init__()
            self.proj_alias = nn.Linear(3, 3)

    other = Unshared()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="proj_alias"):
        load(other, tmp_path / "a")
    assert not adapter_layers(other) and other.state_dict().keys() == before.keys()


def test_monai_dynunet_with_aliased_blocks_round_trips(tmp_path):
    DynUNet = pytest.importorskip("monai.networks.nets").DynUNet

    def net():
        torch.manual_seed(0)
        return DynUNet(2, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2]).eval()

    model = net()
    assert model.input_block is model.skip_layers.downsample  # the network aliases its blocks
    x = torch.randn(1, 1, 16, 16)
    apply(model, "cp_lora", rank=2)
    assert model.input_block.conv1.conv is model.skip_layers.downsample.conv1.conv
    randomize_adapter(model)
    expected = model(x).detach()
    save(model, tmp_path / "dyn")
    fresh = net()
    load(fresh, tmp_path / "dyn")
    assert isinstance(fresh.skip_layers.downsample.conv1.conv, AdapterLayer)
    assert fresh.input_block.conv1.conv is fresh.skip_layers.downsample.conv1.conv
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)
    merge(fresh)
    torch.testing.assert_close(fresh(x), expected, rtol=1e-4, atol=1e-5)


def tied_lm():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=40, n_positions=8, n_embd=16, n_layer=1, n_head=2, tie_word_embeddings=True)
    model = transformers.GPT2LMHeadModel(config).eval()
    assert model.lm_head.weight is model.transformer.wte.weight  # tied embedding
    return model


def test_tied_embedding_transformer_saves_loads_and_refuses_merge(tmp_path):
    model = tied_lm()
    ids = torch.randint(0, 40, (2, 8))
    apply(model, "lora", rank=2, targets=["transformer.wte", "lm_head"])
    randomize_adapter(model)
    expected = model(ids).logits.detach()
    save(model, tmp_path / "lm")
    fresh = tied_lm()
    load(fresh, tmp_path / "lm")
    torch.testing.assert_close(fresh(ids).logits, expected, rtol=0, atol=0)
    weight = fresh.lm_head.root.weight.detach().clone()
    with pytest.raises(ValueError, match="shares its weight"):
        merge(fresh)
    with pytest.raises(ValueError, match="shares its weight"):
        remove(fresh, keep_merged=True)
    assert torch.equal(fresh.lm_head.root.weight, weight) and not any(a.merged for a in adapter_layers(fresh).values())
    torch.testing.assert_close(fresh(ids).logits, expected, rtol=0, atol=0)


def test_merge_of_one_tied_layer_is_refused():
    model = tied_lm()
    apply(model, "lora", rank=2, targets=["lm_head"])
    with pytest.raises(ValueError, match="lm_head.*shares its weight with transformer.wte"):
        merge(model)


def test_export_peft_of_aliased_model(tmp_path):
    """Aliases through a shared parent (DynUNet) export and PEFT gives the same outputs; a layer assigned
    under a second attribute name would be wrapped by PEFT under one name only, so export refuses it."""
    peft = pytest.importorskip("peft")
    DynUNet = pytest.importorskip("monai.networks.nets").DynUNet
    from lowrank_vision.core import export_peft

    torch.manual_seed(0)
    base = DynUNet(2, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2]).eval()
    ours = DynUNet(2, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2]).eval()
    ours.load_state_dict(base.state_dict())
    apply(ours, "lora", rank=2, targets=nn.Conv2d)
    randomize_adapter(ours)
    x = torch.randn(1, 1, 16, 16)
    export_peft(ours, tmp_path / "peft")
    with warnings.catch_warnings():  # PEFT lists the shared layers' second names as "missing keys"; they are the same modules
        warnings.filterwarnings("ignore", message="Found missing adapter keys")
        peft_model = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft"))
    torch.testing.assert_close(peft_model(x), ours(x), rtol=0, atol=1e-4)

    shared = SharedNet()
    apply(shared, "lora", rank=2)
    with pytest.raises(ValueError, match="proj_alias"):
        export_peft(shared, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_trainable_pattern_may_name_a_layer_by_its_second_name():
    model = SharedNet()
    apply(model, "lora", rank=2, targets=["head"], trainable=("proj_alias",))
    assert model.proj.weight.requires_grad and model.proj.bias.requires_grad
    assert not model.first[0].weight.requires_grad
