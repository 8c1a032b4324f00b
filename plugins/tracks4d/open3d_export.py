"""PLY point clouds and camera frustums of a reconstruction (the plugin's open3d host file).

With open3d importable (``pip install 'lowrank-vision[tracks]'``; its libusb dependency comes from
the ``libusb-package`` wheel where the system has none, see ``plugins/_open3d.py``) the files are written by ``open3d.io.write_point_cloud`` and
``write_line_set``; otherwise by the core's binary PLY writer (``core.files.write_ply``), which every viewer (open3d,
MeshLab, CloudCompare, Blender) reads. :func:`ply_writer` says which one is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lowrank_vision.core.files import atomic_path, write_ply
from lowrank_vision.plugins._open3d import import_open3d

__all__ = ["ply_writer", "write_points_ply", "write_cameras_ply", "frustum_lines", "export_frames"]


def _open3d():
    try:
        return import_open3d()
    except (ImportError, OSError):  # not installed, or its shared libraries are missing
        return None


def ply_writer() -> str:
    """``"open3d"`` when open3d imports, else ``"plain"``."""
    return "open3d" if _open3d() is not None else "plain"


def write_points_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> Path:
    """Points [M, 3] with colours [M, 3] in [0, 1] as a PLY file (atomic)."""
    o3d = _open3d()
    path = Path(path)
    if o3d is not None:
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(xyz, np.float64)))
        pc.colors = o3d.utility.Vector3dVector(np.clip(np.asarray(rgb, np.float64), 0, 1))
        with atomic_path(path, suffix=".ply") as tmp:
            if not o3d.io.write_point_cloud(str(tmp), pc, write_ascii=True):
                raise OSError(f"open3d could not write {path}")
        return path
    return write_ply(path, xyz, rgb)


def frustum_lines(R: np.ndarray, t: np.ndarray, focal: float, image_size: tuple[int, int], scale: float):
    """Vertices [5, 3] (centre + 4 image corners at depth ``scale``) and edges [8, 2] of one camera, world frame."""
    h, w = image_size
    corners = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]]) / focal
    cam = np.concatenate([np.zeros((1, 3)), np.concatenate([corners, np.ones((4, 1))], 1) * scale])
    world = (cam - t) @ R  # x_world = Rᵀ (x_cam - t)
    edges = np.array([[0, 1], [0, 2], [0, 3], [0, 4], [1, 2], [2, 3], [3, 4], [4, 1]])
    return world, edges


def write_cameras_ply(path: Path, R: np.ndarray, t: np.ndarray, focal: np.ndarray, image_size: tuple[int, int], scale: float) -> Path:
    """Every camera of the clip as a wire frustum (PLY vertices + edges; open3d LineSet when available)."""
    verts, edges = [], []
    for i in range(len(R)):
        v, e = frustum_lines(R[i], t[i], float(focal[i]), image_size, scale)
        edges.append(e + 5 * i)
        verts.append(v)
    V, E = np.concatenate(verts), np.concatenate(edges)
    o3d = _open3d()
    path = Path(path)
    if o3d is not None:
        ls = o3d.geometry.LineSet(o3d.utility.Vector3dVector(V), o3d.utility.Vector2iVector(E))
        with atomic_path(path, suffix=".ply") as tmp:
            if not o3d.io.write_line_set(str(tmp), ls, write_ascii=True):
                raise OSError(f"open3d could not write {path}")
        return path
    return write_ply(path, V, edges=E)


def export_frames(out_dir: Path, recon: dict, visible: np.ndarray, image_size: tuple[int, int]) -> dict:
    """``frame_<t>.ply`` per frame (visible points coloured by depth, moving-γ points red-tinted) + ``cameras.ply``."""
    from matplotlib import colormaps

    out_dir = Path(out_dir)
    pts, depth = recon["points"], recon["depth"]
    lo, hi = np.percentile(depth[visible], [2, 98]) if visible.any() else (0.0, 1.0)
    cmap = colormaps["viridis"]
    files = []
    for fr in range(pts.shape[0]):
        v = visible[fr]
        rgb = cmap(np.clip((depth[fr, v] - lo) / max(hi - lo, 1e-9), 0, 1))[:, :3]
        files.append(write_points_ply(out_dir / f"frame_{fr:04d}.ply", pts[fr, v], rgb))
    extent = float(np.median(np.abs(depth[visible]))) if visible.any() else 1.0
    cams = write_cameras_ply(out_dir / "cameras.ply", recon["R"], recon["t"], recon["focal"], image_size, 0.05 * extent)
    return {"frames": [str(f) for f in files], "cameras": str(cams), "writer": ply_writer()}
