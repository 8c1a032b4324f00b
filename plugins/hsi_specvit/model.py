"""timm registration of the LoLA-SpecViT variants (importing this module registers them).

    import lowrank_vision.plugins.hsi_specvit.model   # noqa: F401  (registers with timm)
    model = timm.create_model("lola_specvit_tiny", in_chans=15, num_classes=8)

Variants (the paper's abstract gives no sizes; ``base`` follows the public code's widths
and depths, 96/192/384 and [3, 4, 19]; ``tiny`` is the CPU default of this package):

* ``lola_specvit_tiny``  9x9 patches, front-end 8/16/32, widths 48/96, depths 2/2
* ``lola_specvit_small`` 11x11 patches, front-end 16/32/64, widths 64/128/256, depths 2/2/4
* ``lola_specvit_base``  15x15 patches, front-end 32/64/96, widths 96/192/384, depths 3/4/19

``pretrained=True`` works for ``lola_specvit_tiny`` with the shipped weights (trained on the
synthetic default: 15 PCA components, 8 classes); other shapes raise a clear error.
"""

from __future__ import annotations

from typing import Any

from timm.models import register_model

from .specvit import LoLASpecViT, SpecViTConfig

__all__ = ["VARIANTS", "create_lola_specvit", "lola_specvit_tiny", "lola_specvit_small", "lola_specvit_base"]

VARIANTS: dict[str, dict[str, Any]] = {
    "lola_specvit_tiny": dict(img_size=9, frontend_channels=(8, 16, 32), embed_dim=48, depths=(2, 2), num_heads=(2, 4),
                              window_size=3, mlp_ratio=2.0),
    "lola_specvit_small": dict(img_size=11, frontend_channels=(16, 32, 64), embed_dim=64, depths=(2, 2, 4),
                               num_heads=(2, 4, 8), window_size=3, mlp_ratio=2.0),
    "lola_specvit_base": dict(img_size=15, frontend_channels=(32, 64, 96), embed_dim=96, depths=(3, 4, 19),
                              num_heads=(4, 8, 16), window_size=4, mlp_ratio=4.0),
}


def _pretrained_cfg(name: str) -> dict:
    return {"architecture": name, "num_classes": 8, "input_size": (15, VARIANTS[name]["img_size"], VARIANTS[name]["img_size"]),
            "classifier": "head", "first_conv": "frontend.convs.0", "license": "apache-2.0",
            "description": "LoLA-SpecViT (arXiv 2506.17759) re-implemented in lowrank_vision"}


def create_lola_specvit(variant: str, pretrained: bool = False, **kwargs) -> LoLASpecViT:
    """Build a variant; timm's bookkeeping kwargs (``pretrained_cfg``, ...) are accepted and ignored."""
    if variant not in VARIANTS:
        raise KeyError(f"variant: unknown {variant!r}; expected one of {sorted(VARIANTS)}")
    for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only", "global_pool"):
        kwargs.pop(k, None)
    for k in ("drop_path_rate", "drop_block_rate"):  # timm training scripts pass these; not used here
        kwargs.pop(k, None)
    args = {**VARIANTS[variant], **kwargs}
    model = LoLASpecViT(SpecViTConfig(**args))
    model.pretrained_cfg = model.default_cfg = _pretrained_cfg(variant)
    if pretrained:
        from .weights import load_default_weights

        load_default_weights(model, variant)
    return model


@register_model
def lola_specvit_tiny(pretrained: bool = False, **kwargs) -> LoLASpecViT:
    return create_lola_specvit("lola_specvit_tiny", pretrained, **kwargs)


@register_model
def lola_specvit_small(pretrained: bool = False, **kwargs) -> LoLASpecViT:
    return create_lola_specvit("lola_specvit_small", pretrained, **kwargs)


@register_model
def lola_specvit_base(pretrained: bool = False, **kwargs) -> LoLASpecViT:
    return create_lola_specvit("lola_specvit_base", pretrained, **kwargs)
