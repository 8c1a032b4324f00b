"""lowrank_vision.core: low-rank adapters and operators for any PyTorch model.

Needs torch (and numpy, safetensors) only; host tools are imported by the plugins.

    >>> from lowrank_vision.core import apply, merge
    >>> report = apply(model, "cp_lora", rank=8, targets="*.conv")
"""

from ._version import __version__
from .adapters import AdapterConfig, AdapterLayer, get_adapter_class, list_adapters, register_adapter
from .inject import AdapterReport, adapter_layers, apply, count_parameters, merge, remove, set_active, trainable_parameters, unmerge
from .io import AdapterFileError, export_peft, import_peft, load, save
from .tune import tune_strategies

__all__ = [
    "__version__",
    "apply", "merge", "unmerge", "remove", "set_active", "adapter_layers", "trainable_parameters", "count_parameters",
    "AdapterReport", "AdapterConfig", "AdapterLayer", "register_adapter", "get_adapter_class", "list_adapters",
    "save", "load", "export_peft", "import_peft", "AdapterFileError", "tune_strategies",
]
from . import init, optim  # noqa: E402,F401  (core.optim: GaLore, Fira, LoRAPro, EGGROLL; core.init: LoRA-GA/LoRA-SB init, registers lora_xs)
