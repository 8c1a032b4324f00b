"""Hot-Swap MarkBoard: an n-bit owner signature held by n swappable LoRA branches, verified black-box.

After "Hot-Swap MarkBoard: An Efficient Black-box Watermarking Approach for Large-scale Model
Distribution" (arXiv 2507.20650). For every bit ``i`` and value ``v`` one LoRA branch
``markboard_<i>_<v>`` is trained on the frozen base model; a user's signature ``b`` installs the
branches ``markboard_<i>_<b_i>``. Changing a user's signature swaps branches; nothing is retrained.
Verification needs only the model's outputs on the secret trigger sets (``core.functional.watermark``).

The branches are the core's ``lora`` adapters, stacked on the same layers under their own adapter
names and switched with ``core.set_active`` (the public API fits: named adapters, stacking, merge,
save/load). Choices the paper leaves open or that differ from it:

* All ``2n`` branches are trained together, each step on a random signature, so that any
  combination of ``n`` branches works once installed side by side (the paper embeds each watermark
  independently). The clean-data loss is the KL divergence to the frozen base model's outputs, so
  no labels are needed.
* Obfuscation: :meth:`MarkBoard.distribute` merges the chosen branches into the base weights and
  returns a plain model (no adapter modules, the same parameter count as the base); the paper's own
  obfuscation mechanism is not reproduced. :meth:`MarkBoard.reissue` changes the signature of such a
  merged copy in place by adding the difference of branch updates.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..adapters import AdapterLayer
from ..functional import watermark as F_wm
from ..inject import adapter_layers, apply, remove, set_active
from ..validate import is_number, require, require_ints

__all__ = ["MarkBoardConfig", "MarkBoard", "Verification", "embed", "BRANCH_PREFIX"]

BRANCH_PREFIX = "markboard_"
Predictor = Union[nn.Module, Callable[[Tensor], Tensor]]


@dataclass(frozen=True)
class MarkBoardConfig:
    """How the signature branches are made and read."""

    n_bits: int = 8
    """Length of the owner signature (2 * n_bits LoRA branches are trained)."""
    rank: int = 4
    """Rank of each LoRA branch."""
    targets: Optional[tuple[str, ...]] = None
    """Layer names (globs) that carry the branches; ``None``: every Linear/Conv (``core.apply`` rules)."""
    trigger_kind: Literal["scatter", "patch"] = "scatter"
    """``scatter``: random input elements (any input shape); ``patch``: one random window per bit (inputs [C, *spatial], for CNNs)."""
    trigger_fraction: float = 0.1
    """Share of input elements (``scatter``) or of spatial positions (``patch``) the trigger stamp overwrites."""
    trigger_strength: float = 3.0
    """Stamp values are +-strength times the clean inputs' standard deviation."""
    verify_per_bit: int = 32
    """Held-out clean inputs stamped per bit for verification (taken from the end of the inputs given to embed)."""
    steps: int = 300
    """Training steps of the 2n branches (each step on a random signature)."""
    batch_size: int = 64
    """Clean inputs per step."""
    triggers_per_bit: int = 8
    """Stamped inputs per bit per step."""
    lr: float = 3e-3
    """Adam learning rate of the branches."""
    fidelity_weight: float = 1.0
    """Weight of the clean-data KL term (keeps the watermarked model's clean outputs those of the base)."""
    min_rate: float = 0.5
    """A bit is read when one of its two target classes gets at least this share of the trigger answers."""
    seed: int = 0
    """Seeds the trigger key, the target classes and the training draws."""

    def __post_init__(self) -> None:
        require_ints(self, "n_bits", "rank", "verify_per_bit", "steps", "batch_size", "triggers_per_bit",
                     expected="a positive integer")
        for name in ("trigger_fraction", "min_rate"):
            value = getattr(self, name)
            require(self, name, is_number(value) and 0.0 < value <= 1.0, "a number in (0, 1]")
        for name in ("trigger_strength", "lr", "fidelity_weight"):
            value = getattr(self, name)
            require(self, name, is_number(value) and value > 0, "a positive number")
        require(self, "trigger_kind", self.trigger_kind in ("scatter", "patch"), "'scatter' or 'patch'")
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", (self.targets,))


@dataclass
class Verification:
    """What a black-box check of one model found."""

    claimed: list[int]
    decoded: list[int]
    """Bits read from the outputs (``-1``: neither target class reached ``min_rate``)."""
    rates: list[list[float]]
    """Per bit, the share of trigger answers equal to the bit-0 and the bit-1 target class."""
    bit_accuracy: float
    """Share of decoded bits equal to the claimed ones."""
    verified: bool
    """Every bit decoded and equal to the claimed signature."""


@dataclass
class MarkBoard:
    """The owner's secret key (trigger stamps, target classes, verification inputs) and the branch names."""

    config: MarkBoardConfig
    masks: Tensor
    patterns: Tensor
    targets: Tensor
    verify_inputs: Tensor
    """``[n_bits, verify_per_bit, *input_shape]`` stamped held-out inputs."""
    history: list[float] = field(default_factory=list)

    @property
    def n_bits(self) -> int:
        return self.config.n_bits

    def branch_name(self, bit: int, value: int) -> str:
        return f"{BRANCH_PREFIX}{bit}_{value}"

    def branch_names(self) -> list[str]:
        return [self.branch_name(i, v) for i in range(self.n_bits) for v in (0, 1)]

    def _bits(self, bits: Sequence[int]) -> list[int]:
        bits = [int(b) for b in (bits.tolist() if isinstance(bits, Tensor) else bits)]
        if len(bits) != self.n_bits or any(b not in (0, 1) for b in bits):
            raise ValueError(f"signature must be {self.n_bits} bits of 0/1, got {bits!r}")
        return bits

    # -- owner side: install, distribute, re-issue ------------------------------------------------
    def set_signature(self, model: nn.Module, bits: Optional[Sequence[int]]) -> None:
        """Activate the branches of ``bits`` (``None``: none, the base model); other adapters keep their state."""
        others = {a.adapter_name for a in adapter_layers(model).values() if a.active and not a.adapter_name.startswith(BRANCH_PREFIX)}
        chosen = [] if bits is None else [self.branch_name(i, b) for i, b in enumerate(self._bits(bits))]
        missing = set(self.branch_names()) - {a.adapter_name for a in adapter_layers(model).values()}
        if missing:
            raise ValueError(f"model lacks MarkBoard branches {sorted(missing)[:4]}; embed or load them first")
        set_active(model, sorted(others) + chosen)

    def distribute(self, model: nn.Module, bits: Sequence[int]) -> nn.Module:
        """A plain copy of ``model`` carrying signature ``bits`` merged into its weights (no adapter modules left).

        Other adapters that are active on ``model`` are merged into the copy too; inactive ones are dropped.
        """
        bits = self._bits(bits)
        copy_ = copy.deepcopy(model)
        self.set_signature(copy_, bits)
        for name in set(self.branch_names()) - {self.branch_name(i, b) for i, b in enumerate(bits)}:
            remove(copy_, name)
        remove(copy_, keep_merged=True)
        for p in copy_.parameters():
            p.requires_grad_(False)
        return copy_

    def reissue(self, master: nn.Module, distributed: nn.Module, old_bits: Sequence[int], new_bits: Sequence[int]) -> None:
        """Change a merged copy from ``old_bits`` to ``new_bits`` in place: ``W += dW(new) - dW(old)`` per changed bit."""
        old_bits, new_bits = self._bits(old_bits), self._bits(new_bits)
        with torch.no_grad():
            for i, (old, new) in enumerate(zip(old_bits, new_bits)):
                if old == new:
                    continue
                gone, come = adapter_layers(master, self.branch_name(i, old), unique=True), adapter_layers(master, self.branch_name(i, new), unique=True)
                for layer_name, adapter in come.items():
                    weight = distributed.get_submodule(layer_name).weight
                    weight.add_((adapter.delta_weight() - gone[layer_name].delta_weight()).to(weight.dtype))

    # -- anyone with the key: black-box verification --------------------------------------------------
    @torch.no_grad()
    def read(self, predict: Predictor) -> tuple[list[int], Tensor]:
        """Decoded bits and the ``[n_bits, 2]`` target rates, from ``predict``'s outputs on the trigger sets only."""
        was_training = isinstance(predict, nn.Module) and predict.training
        if isinstance(predict, nn.Module):
            predict.eval()
        try:
            flat = self.verify_inputs.flatten(0, 1)
            outputs = predict(flat)
        finally:
            if was_training:
                predict.train()
        predictions = outputs.argmax(-1).reshape(self.n_bits, -1).cpu()
        rates = F_wm.target_rates(predictions, self.targets)
        return F_wm.decode_bits(rates, self.config.min_rate).tolist(), rates

    def verify(self, predict: Predictor, claimed: Sequence[int]) -> Verification:
        """Whether ``predict`` (a model, or any function from inputs to class scores) carries signature ``claimed``."""
        claimed = self._bits(claimed)
        decoded, rates = self.read(predict)
        matches = [d == c for d, c in zip(decoded, claimed)]
        return Verification(claimed, decoded, rates.tolist(), sum(matches) / len(matches), all(matches))

    def to_record(self) -> dict:
        return {"config": asdict(self.config), "branches": self.branch_names(), "targets": self.targets.tolist()}


def _inputs_of(data) -> Tensor:
    if isinstance(data, (tuple, list)) and data:  # (inputs, labels): the labels are not used
        data = data[0]
    if not isinstance(data, Tensor):
        raise TypeError(f"inputs must be a tensor of clean inputs [N, ...], got {type(data).__name__}")
    return data


def embed(model: nn.Module, inputs: Tensor, config: MarkBoardConfig = MarkBoardConfig(), *, num_classes: Optional[int] = None) -> MarkBoard:
    """Train the ``2 * n_bits`` signature branches onto ``model`` (whose own weights stay frozen).

    Args:
        inputs: clean unlabelled inputs ``[N, ...]``; the last ``verify_per_bit`` are kept out of training
            and stamped into the verification sets.
        num_classes: classes of the output; default the size of the model's last output axis.
    Returns:
        the :class:`MarkBoard` key. Afterwards no branch is active: call :meth:`MarkBoard.set_signature`.
    """
    inputs = _inputs_of(inputs)
    if len(inputs) <= config.verify_per_bit + 1:
        raise ValueError(f"inputs has {len(inputs)} samples; need more than verify_per_bit={config.verify_per_bit} + 1")
    if any(isinstance(a, AdapterLayer) and a.adapter_name.startswith(BRANCH_PREFIX) for a in model.modules()):
        raise ValueError("model already carries MarkBoard branches")
    generator = torch.Generator().manual_seed(config.seed)
    train_inputs, held_out = inputs[: -config.verify_per_bit], inputs[-config.verify_per_bit:]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        base_logits = model(train_inputs)
    num_classes = num_classes or base_logits.shape[-1]
    scale = float(train_inputs.std())
    masks, patterns = F_wm.make_trigger_key(tuple(inputs.shape[1:]), config.n_bits, fraction=config.trigger_fraction,
                                            strength=config.trigger_strength * scale, generator=generator, kind=config.trigger_kind)
    targets = F_wm.pick_target_classes(config.n_bits, num_classes, generator)
    verify_inputs = torch.stack([F_wm.stamp(held_out, masks[i], patterns[i]) for i in range(config.n_bits)])
    board = MarkBoard(config, masks, patterns, targets, verify_inputs)

    for name in board.branch_names():
        apply(model, "lora", rank=config.rank, targets=list(config.targets) if config.targets else None, adapter_name=name)
    params = [p for name in board.branch_names() for a in adapter_layers(model, name, unique=True).values() for _, p in a.adapter_parameters()]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    device = next(model.parameters()).device
    n_train = len(train_inputs)
    for _ in range(config.steps):
        bits = torch.randint(0, 2, (config.n_bits,), generator=generator)
        board.set_signature(model, bits.tolist())
        clean = torch.randint(0, n_train, (config.batch_size,), generator=generator)
        picks = torch.randint(0, n_train, (config.n_bits, config.triggers_per_bit), generator=generator)
        triggered = torch.cat([F_wm.stamp(train_inputs[picks[i]], masks[i], patterns[i]) for i in range(config.n_bits)])
        labels = targets[torch.arange(config.n_bits), bits].repeat_interleave(config.triggers_per_bit)
        out = model(torch.cat([train_inputs[clean], triggered]).to(device))
        clean_out, trigger_out = out[: config.batch_size], out[config.batch_size:]
        fidelity = F.kl_div(F.log_softmax(clean_out, -1), F.log_softmax(base_logits[clean].to(device), -1), log_target=True, reduction="batchmean")
        loss = config.fidelity_weight * fidelity + F.cross_entropy(trigger_out, labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        board.history.append(float(loss.detach()))
    board.set_signature(model, None)
    model.train(was_training)
    return board
