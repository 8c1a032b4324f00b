"""Adapter families (module shells). Importing this package registers the built-in families."""

from .base import AdapterConfig, AdapterLayer, DeltaAdapter, LowRankDelta, NoOptions, root_layer
from .registry import canonical_name, get_adapter_class, list_adapters, register_adapter
from . import lora, conv_lora, cp_lora, nola, dora, nera, spline_lora  # noqa: E402, F401  (registration side effect)
from .conv_lora import ConvLoRA
from .cp_lora import CPLoRA
from .dora import ConvDoRA, CPDoRA, DoRA, DoRAAdapter
from .lora import LoRA
from .nera import NeRA
from .nola import NOLA
from .spline_lora import SplineLoRA

__all__ = [
    "AdapterConfig", "AdapterLayer", "DeltaAdapter", "LowRankDelta", "NoOptions", "root_layer",
    "register_adapter", "get_adapter_class", "list_adapters", "canonical_name",
    "LoRA", "ConvLoRA", "CPLoRA", "NOLA", "DoRA", "ConvDoRA", "CPDoRA", "DoRAAdapter", "NeRA", "SplineLoRA",
]
from . import noble, sltrain, flylora, block_lora, mtlora, hypelora  # noqa: E402, F401  (registration side effect: more families)
