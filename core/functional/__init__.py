"""Pure tensor math of every adapter family; the modules in ``core.adapters`` are thin shells over it."""

from . import conv_lora, cp, dora, layout, lora, nera, nola, spline_lora
from .layout import LayerGeometry, UnsupportedLayerError, geometry_of, layer_forward, logical_to_weight, weight_to_logical

__all__ = [
    "conv_lora", "cp", "dora", "layout", "lora", "nera", "nola", "spline_lora",
    "LayerGeometry", "UnsupportedLayerError", "geometry_of", "layer_forward", "logical_to_weight", "weight_to_logical",
]
