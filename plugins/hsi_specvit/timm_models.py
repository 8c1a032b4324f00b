"""timm registration of the LoLA-SpecViT variants (the plugin's host file for timm).

Importing ``lowrank_vision.plugins.hsi_specvit`` is enough: the package imports this module
as soon as timm is imported (or at once if timm already is), so::

    import lowrank_vision.plugins.hsi_specvit  # noqa: F401
    model = timm.create_model("lola_specvit_tiny", in_chans=15, num_classes=8)

``pretrained=True`` works for ``lola_specvit_tiny`` with the shipped weights (trained on the
synthetic default: 15 PCA components, 8 classes); other shapes raise a clear error. Options
the model cannot honour (``features_only=True``, ``drop_path_rate``) raise too
(:func:`.model.create_lola_specvit`).
"""

from __future__ import annotations

from timm.models import register_model

from .model import VARIANTS, LoLASpecViT, create_lola_specvit

__all__ = ["lola_specvit_tiny", "lola_specvit_small", "lola_specvit_base"]


def _create(variant: str, pretrained: bool, **options) -> LoLASpecViT:
    model = create_lola_specvit(variant, **options)
    size = VARIANTS[variant]["img_size"]
    model.pretrained_cfg = model.default_cfg = {
        "architecture": variant, "num_classes": model.num_classes, "input_size": (model.in_chans, size, size),
        "classifier": "head", "first_conv": "frontend.convs.0", "license": "apache-2.0",
        "description": "LoLA-SpecViT (arXiv 2506.17759) re-implemented in lowrank_vision"}
    if pretrained:
        from .weights import load_default_weights

        load_default_weights(model, variant)
    return model


@register_model
def lola_specvit_tiny(pretrained: bool = False, **kwargs) -> LoLASpecViT:
    """LoLA-SpecViT tiny: 9x9 patches, front-end 8/16/32, widths 48/96, depths 2/2 (shipped weights)."""
    return _create("lola_specvit_tiny", pretrained, **kwargs)


@register_model
def lola_specvit_small(pretrained: bool = False, **kwargs) -> LoLASpecViT:
    """LoLA-SpecViT small: 11x11 patches, front-end 16/32/64, widths 64/128/256, depths 2/2/4."""
    return _create("lola_specvit_small", pretrained, **kwargs)


@register_model
def lola_specvit_base(pretrained: bool = False, **kwargs) -> LoLASpecViT:
    """LoLA-SpecViT base: 15x15 patches, front-end 32/64/96, widths 96/192/384, depths 3/4/19."""
    return _create("lola_specvit_base", pretrained, **kwargs)
