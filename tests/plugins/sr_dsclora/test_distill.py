"""DSCLoRA: ConvLoRA placement and counts, exact merge/fold to plain SPAN, distillation loss."""

import copy
from dataclasses import FrozenInstanceError, replace

import pytest
import torch


from lowrank_vision.core import adapter_layers, count_parameters
from lowrank_vision.plugins.sr_dsclora.config import DSCLoRAConfig, SRTrainConfig, sr_train_defaults
from lowrank_vision.plugins.sr_dsclora.distill import DistillationLoss, attach_dsclora, fold_dsclora
from lowrank_vision.plugins.sr_dsclora.functional import affinity_distance, spatial_affinity
from lowrank_vision.plugins.sr_dsclora.model import build_span, reparameterize
from lowrank_vision.plugins.sr_dsclora.recipes import count_flops, finetune_dsclora

torch.set_num_threads(1)


def conv_lora_params(c_in: int, c_out: int, rank: int, k: int = 3) -> int:
    """loralib ConvLoRA: A is (r*k, C_in*k), B is (C_out*k, r*k)."""
    return rank * k * c_in * k + c_out * k * rank * k


def _teacher(scale=4, channels=26, seed=0):
    torch.manual_seed(seed)
    return reparameterize(build_span(scale, channels)).eval()


def count_params(model):
    return count_parameters(model)[1]


def _perturb_lora(model, seed=1, std=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)


# (channels, scale, block_rank, tail_rank)
RANK_CASES = [(26, 4, 2, 8), (16, 2, 4, 4)]


@pytest.mark.parametrize("channels, scale, block_rank, tail_rank", RANK_CASES)
def test_dsclora_trainable_count_and_placement(channels, scale, block_rank, tail_rank):
    model = _teacher(scale, channels)
    cfg = DSCLoRAConfig(block_rank=block_rank, block_alpha=2.0 * block_rank, tail_rank=tail_rank, tail_alpha=2.0 * tail_rank)
    blocks, tail = attach_dsclora(model, cfg)
    # one adapter name for both groups: the second report lists every DSCLoRA layer
    assert len(blocks.wrapped) == 18 and all(n.startswith("block_") and n.endswith(".eval_conv") for n in blocks.wrapped)
    assert sorted(set(tail.wrapped) - set(blocks.wrapped)) == ["conv_2.eval_conv", "upsampler.0"]
    expected = 18 * conv_lora_params(channels, channels, block_rank)
    expected += conv_lora_params(channels, channels, tail_rank) + conv_lora_params(channels, 3 * scale * scale, tail_rank)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == expected == tail.trainable_params
    if (channels, scale, block_rank, tail_rank) == (26, 4, 2, 8):
        assert trainable == 25_920


def test_fresh_adapter_is_a_no_op_and_merge_is_exact():
    teacher = _teacher()
    student = copy.deepcopy(teacher)
    attach_dsclora(student)
    x = torch.rand(2, 3, 19, 23)
    with torch.no_grad():
        assert (student.eval()(x) - teacher(x)).abs().max().item() == 0.0
    _perturb_lora(student)
    with torch.no_grad():
        adapted = student(x)
        assert (adapted - teacher(x)).abs().max().item() > 1e-3  # the adapters do something
        folded = fold_dsclora(student)
        merged = folded(x)
    assert (merged - adapted).abs().max().item() < 1e-4
    assert adapter_layers(folded) == {} and not hasattr(folded, "_lowrank_requires_grad")
    assert all(p.requires_grad for p in folded.parameters())  # the flags before attach_dsclora come back
    # The deployed network is exactly SPAN: same parameter names, shapes, count and FLOPs.
    assert count_params(folded) == count_params(teacher) == 130_828
    assert {k: v.shape for k, v in folded.state_dict().items()} == {k: v.shape for k, v in teacher.state_dict().items()}
    assert count_flops(folded, (64, 64)) == count_flops(teacher, (64, 64))
    assert all(type(m) in (torch.nn.Conv2d, torch.nn.PixelShuffle, torch.nn.Sequential) or m is folded or "SPAB" in type(m).__name__ or "Conv3XC" in type(m).__name__
               for m in folded.modules())


def test_attach_needs_a_deployed_span():
    with pytest.raises(ValueError, match="re-parameterised"):
        attach_dsclora(build_span(4, 8))
    with pytest.raises(TypeError, match="SPAN"):
        attach_dsclora(torch.nn.Conv2d(3, 3, 3))


def test_spatial_affinity_properties():
    torch.manual_seed(0)
    f = torch.randn(2, 8, 12, 10)
    s = spatial_affinity(f)
    assert s.shape == (2, 120, 120)
    assert torch.allclose(torch.diagonal(s, dim1=1, dim2=2), torch.ones(2, 120), atol=1e-5)  # cosine with itself
    assert affinity_distance(f, f).item() == 0.0
    assert affinity_distance(f, 3.0 * f).item() < 1e-6  # invariant to per-pixel scale
    assert affinity_distance(f, torch.randn_like(f)).item() > 0.05
    assert spatial_affinity(torch.randn(1, 4, 40, 40), max_side=16).shape == (1, 256, 256)
    with pytest.raises(ValueError, match="spatial size"):
        affinity_distance(f, torch.randn(2, 8, 6, 10))


def test_distillation_loss_terms():
    teacher = _teacher(2, 8)
    student = copy.deepcopy(teacher)
    attach_dsclora(student, DSCLoRAConfig(block_rank=2, tail_rank=2))
    lr, hr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 32, 32)
    loss, parts = DistillationLoss(teacher)(student, (lr, hr))
    assert parts["l_ts"] == 0.0 and parts["l_ad"] == 0.0  # fresh student == teacher
    assert loss.item() == pytest.approx(float(parts["l_rec"]), rel=1e-6)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in parts.values())  # capturable
    _perturb_lora(student)
    loss, parts = DistillationLoss(teacher)(student, (lr, hr))
    assert parts["l_ts"] > 0 and parts["l_ad"] > 0
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("field, value", [("block_rank", 0), ("tail_alpha", 0.0), ("lambda_ad", -1.0), ("affinity_side", 0)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"DSCLoRAConfig.{field} must be"):
        DSCLoRAConfig(**{field: value})


@pytest.mark.parametrize("kwargs, field", [({"train_form": "both"}, "train_form"), ({"lr_patch": 4}, "lr_patch"),
                                           ({"scale": 5}, "scale"), ({"batch_size": 0}, "batch_size"), ({"train": {}}, "train")])
def test_train_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"SRTrainConfig.{field} must be"):
        SRTrainConfig(**kwargs)


def test_configs_are_frozen_and_nest_the_train_loop():
    cfg = SRTrainConfig()
    with pytest.raises(FrozenInstanceError):
        cfg.channels = 8
    assert (cfg.train.max_steps, cfg.train.lr, cfg.train.scheduler, cfg.train.max_grad_norm) == (300, 1e-3, "cosine", None)
    assert replace(cfg, channels=8).channels == 8 and cfg.channels == 26
    d = DSCLoRAConfig.from_ranks(4, 16)
    assert (d.block_alpha, d.tail_alpha) == (8.0, 32.0)


def test_short_finetune_lowers_the_loss_and_keeps_span_size(tmp_path):
    hr = torch.rand(3, 64, 64)
    teacher = _teacher(2, 8)
    cfg = SRTrainConfig(scale=2, channels=8, batch_size=4, lr_patch=12,
                        train=sr_train_defaults(max_steps=30, lr=5e-3, cpu=True, progress=False, log_every=5))
    # train on one synthetic image through the folder reader (the bundled photos are exercised elsewhere)
    from lowrank_vision.datasets.images import write_image

    write_image(hr, tmp_path / "img.png")
    student, result, _ = finetune_dsclora(teacher, replace(cfg, data=str(tmp_path)))
    first, last = result.history[0]["l_rec"], result.history[-1]["l_rec"]
    assert last < first
    assert count_params(student) == count_params(teacher)
