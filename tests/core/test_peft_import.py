"""``import_peft`` keeps what PEFT saved beside the LoRA factors (``bias``, ``modules_to_save``)
or refuses it; an imported adapter gives the PeftModel's outputs."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from lowrank_vision.core import AdapterFileError, import_peft

peft = pytest.importorskip("peft")


class HeadNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1))))


def trained_peft(tmp_path, **kwargs):
    torch.manual_seed(0)
    base = HeadNet()
    config = peft.LoraConfig(r=3, lora_alpha=6, target_modules=["conv", "fc"], **kwargs)
    peft_model = peft.get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():  # a "trained" adapter: every saved tensor moved away from its start
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    peft_model.save_pretrained(str(tmp_path))
    return base, peft_model


@pytest.mark.parametrize("kwargs", [{"bias": "all"}, {"bias": "lora_only"}, {"modules_to_save": ["head"]}, {"bias": "all", "modules_to_save": ["head"]}])
def test_imported_adapter_gives_peft_outputs(kwargs, tmp_path):
    base, peft_model = trained_peft(tmp_path, **kwargs)
    x = torch.randn(2, 3, 4, 4)
    expected = peft_model(x).detach()
    assert not torch.allclose(base(x), expected)
    ours = copy.deepcopy(base)
    import_peft(ours, tmp_path)
    torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-5)
    # what PEFT trains stays trainable here too
    assert ours.conv.root.bias.requires_grad == (kwargs.get("bias", "none") != "none")
    assert ours.head.weight.requires_grad == ("modules_to_save" in kwargs)


def test_lora_bias_is_refused_and_model_unchanged(tmp_path):
    torch.manual_seed(0)
    base = HeadNet()
    peft_model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, target_modules=["fc"]))
    peft_model.save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["lora_bias"] = True
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    ours = copy.deepcopy(base)
    with pytest.raises(AdapterFileError, match="lora_bias"):
        import_peft(ours, tmp_path)
    assert type(ours.fc) is nn.Linear


def test_dropout_is_kept(tmp_path):
    trained_peft(tmp_path, lora_dropout=0.25)
    ours = HeadNet()
    import_peft(ours, tmp_path)
    assert ours.fc.config.dropout == 0.25 and ours.conv.config.dropout == 0.25


class EmbeddingNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, ids):
        return self.fc(self.emb(ids))


def test_embedding_lora_imports_and_exports_with_peft_outputs(tmp_path):
    from lowrank_vision.core import apply, export_peft

    from .cases import randomize_adapter

    torch.manual_seed(0)
    base = EmbeddingNet()
    peft_model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["emb", "fc"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * 0.3)
    ids = torch.randint(0, 10, (2, 5))
    peft_model.save_pretrained(str(tmp_path / "in"))
    ours = copy.deepcopy(base)
    import_peft(ours, tmp_path / "in")
    torch.testing.assert_close(ours(ids), peft_model(ids).detach(), rtol=0, atol=1e-5)

    mine = copy.deepcopy(base)
    apply(mine, "lora", rank=3, alpha=6)
    randomize_adapter(mine)
    export_peft(mine, tmp_path / "out")
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "out"))
    torch.testing.assert_close(loaded(ids), mine(ids), rtol=0, atol=1e-5)
