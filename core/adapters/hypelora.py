"""HypeLoRA (``hypelora``): one hyper-network per adapter generates every wrapped layer's ``A`` and ``B``.

Math, and how one network serves layers of different shapes, are in ``core.functional.hypelora``.
Sharing: the layers wrapped by one ``apply`` call (one adapter, one options object) share one
:class:`HyperNetwork` module; the first layer built owns it. That call also gives the options a fresh
``network_id`` (saved with the adapter), so ``load`` rebuilds the same grouping even when one adapter
name was spread over several ``apply`` calls (one network per call). It is a submodule of every layer (so
``.to()``, ``state_dict`` and ``deepcopy`` keep it shared) but only its owner lists it in
``adapter_parameters``, so ``save`` writes it once (under the owner's name), ``load`` fills it once and
parameter counts count it once. Each layer has its own ``layer_embedding`` (``embed_dim`` numbers).
The update is linear in the weight (``dW = scale * B A``): it merges exactly and runs every strategy.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..functional import hypelora as F_hyper
from ..functional.layout import LayerGeometry
from ..validate import require, require_ints
from .base import DeltaAdapter, LowRankDelta
from .lora import LoRADelta
from .registry import register_adapter

__all__ = ["HypeLoRAOptions", "HyperNetwork", "HypeLoRADelta", "HypeLoRA"]

_SHARED = "_shared_hypernetwork"  # attribute of the options object one apply() call hands to every layer


@dataclass
class HypeLoRAOptions:
    embed_dim: int = 8
    """Size of each layer's learned embedding ``z_l``."""
    code_dim: int = 8
    """Size of the fixed sinusoidal chunk-index code."""
    hidden_dim: int = 32
    """Hidden width of the hyper-network."""
    chunk_size: int = 16
    """Columns of ``A`` / rows of ``B`` generated per chunk."""
    network_id: Optional[str] = None
    """Which shared network the layers belong to; ``None`` gets a fresh id when ``apply`` builds the network (written
    to the saved config, so ``load`` groups the layers as they were)."""

    def __post_init__(self) -> None:
        require_ints(self, "embed_dim", "code_dim", "hidden_dim", "chunk_size", minimum=1, expected="an integer >= 1")
        require(self, "network_id", self.network_id is None or (isinstance(self.network_id, str) and self.network_id != ""),
                "None or a non-empty string")


class HyperNetwork(nn.Module):
    """The shared generator: ``[z; code] -> tanh -> A chunk`` and ``-> B chunk`` (two linear heads)."""

    def __init__(self, options: HypeLoRAOptions, rank: int, *, dtype=None, device=None):
        super().__init__()
        self.rank = rank
        self.chunk_size = options.chunk_size
        self.code_dim = options.code_dim
        weights = F_hyper.init_hypernetwork(options.embed_dim, options.code_dim, options.hidden_dim, options.chunk_size, rank,
                                            dtype=dtype, device=device)
        for name, value in weights.items():
            setattr(self, name, nn.Parameter(value))

    def factors(self, embedding: Tensor, codes_a: Tensor, codes_b: Tensor, fan_in: int, out_channels: int) -> tuple[Tensor, Tensor]:
        """``A [r, fan_in]`` and ``B [C_out, r]`` of the layer with ``embedding`` and chunk codes ``codes_a``, ``codes_b``."""
        chunks_a = F_hyper.generate_chunks(embedding, codes_a, self.w1, self.b1, self.wa, self.ba)
        chunks_b = F_hyper.generate_chunks(embedding, codes_b, self.w1, self.b1, self.wb, self.bb)
        return F_hyper.assemble_a(chunks_a, self.rank, fan_in), F_hyper.assemble_b(chunks_b, self.rank, out_channels)


def shared_hypernetwork(options: HypeLoRAOptions, rank: int, *, dtype=None, device=None) -> tuple[HyperNetwork, bool]:
    """The hyper-network every layer built with ``options`` uses, and whether this call created it."""
    network = options.__dict__.get(_SHARED)
    if network is not None:
        if network.rank != rank:
            raise ValueError(f"hypelora layers sharing one hyper-network need one rank, got {rank} after {network.rank}")
        return network, False
    network = HyperNetwork(options, rank, dtype=dtype, device=device)
    options.__dict__[_SHARED] = network
    if options.network_id is None:
        options.network_id = uuid.uuid4().hex[:12]
    return network, True


class HypeLoRADelta(LoRADelta):
    """``dW = scale * B_l @ A_l`` with ``(A_l, B_l) = hypernetwork(layer_embedding)``."""

    param_names = ("layer_embedding",)

    def __init__(self, geometry: LayerGeometry, rank: int, options: Optional[HypeLoRAOptions] = None, *, layer_name: str = "", dtype=None, device=None):
        LowRankDelta.__init__(self, geometry, rank)
        options = options if options is not None else HypeLoRAOptions()
        self.hypernetwork, self.owns_hypernetwork = shared_hypernetwork(options, rank, dtype=dtype, device=device)
        self.layer_embedding = nn.Parameter(torch.randn(options.embed_dim).to(dtype=dtype, device=device))
        c = options.chunk_size
        self.register_buffer("codes_a", F_hyper.chunk_codes(F_hyper.num_chunks(geometry.fan_in, c), options.code_dim, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("codes_b", F_hyper.chunk_codes(F_hyper.num_chunks(geometry.out_channels, c), options.code_dim, dtype=dtype, device=device),
                             persistent=False)

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Optional[HypeLoRAOptions] = None) -> int:
        """One layer alone: the whole hyper-network plus its embedding (each further layer adds ``embed_dim``)."""
        o = options or HypeLoRAOptions()
        return F_hyper.hypernetwork_param_count(o.embed_dim, o.code_dim, o.hidden_dim, o.chunk_size, rank) + o.embed_dim

    def factors(self) -> tuple[Tensor, Tensor]:
        g = self.geometry
        lora_a, lora_b = self.hypernetwork.factors(self.layer_embedding, self.codes_a, self.codes_b, g.fan_in, g.out_channels)
        dtype = self.layer_embedding.dtype
        return lora_a.to(dtype), lora_b.to(dtype)


@register_adapter("hypelora")
class HypeLoRA(DeltaAdapter):
    """HypeLoRA: LoRA factors generated by a hyper-network shared across the adapter's layers."""

    delta_cls = HypeLoRADelta
    options_cls = HypeLoRAOptions

    def adapter_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The layer embedding; the shared hyper-network only on the layer that owns it (so it is saved and counted once)."""
        own = super().adapter_parameters()
        if self.delta.owns_hypernetwork:
            return own
        return [(n, p) for n, p in own if not n.startswith("delta.hypernetwork.")]

    @classmethod
    def param_count(cls, geometry: LayerGeometry, rank: int, options: Any = None) -> int:
        return HypeLoRADelta.param_count(geometry, rank, options)
