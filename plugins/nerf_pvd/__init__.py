"""nerf_pvd: Progressive Volume Distillation between NeRF architectures (arXiv 2211.15977; PVD-AL 2304.04012).

Pure-PyTorch fields (:mod:`.fields`: NeRF MLP, hash grid, TensoRF VM, dense SH grid), a renderer
(:mod:`.render`), training and PVD recipes on the shared trainer (:mod:`.recipes`), the app
``lowrank-nerf`` (:mod:`lowrank_vision.apps.nerf`) and a nerfstudio method ``lowrank-pvd``
(:mod:`.nerfstudio_method`, found by nerfstudio through its ``nerfstudio.method_configs`` entry
point). Importing this package imports neither nerfstudio nor the fields.
"""

from __future__ import annotations

from lowrank_vision.plugins import PluginSpec, lazy_demo

__all__ = ["PLUGIN"]


PLUGIN = PluginSpec(
    name="nerf_pvd",
    app="lowrank-nerf",
    description="PVD distillation between NeRF fields (MLP, hash grid, TensoRF-VM, SH grid); transforms.json reader, procedural scenes",
    host="nerfstudio (method lowrank-pvd)",
    demo=lazy_demo(__name__),
)
