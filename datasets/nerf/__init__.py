"""Posed multi-view image sets for NeRF: the ``transforms.json`` reader and the procedural scene generator.

No package on the registries ships a real posed multi-view set (checked: colmap, open3d-doc,
kapture, nerfbaselines and others, see the project's data notes; nerfstudio 1.1.5 and open3d fetch
their sample scenes at run time; the wheels of nerf-pytorch 1.2 and jax-nerf 1.0.9 are code only),
so the embedded default is the generated scene of :mod:`.procedural`; real captures are read with
:func:`read_transforms`.
"""

from .cameras import camera_rays
from .procedural import SceneConfig, make_scene, orbit_poses
from .transforms import PosedImages, read_transforms

__all__ = ["camera_rays", "SceneConfig", "make_scene", "orbit_poses", "PosedImages", "read_transforms"]
