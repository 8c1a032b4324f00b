"""What each ``lowrank-nerf`` subcommand does: ``(config, paths) -> result dict``; no argparse here.

Outputs: checkpoints are single ``.safetensors`` files (:mod:`.model`); metrics are JSON; renders
are PNG frames plus an orbit video (MP4 when ``imageio-ffmpeg`` is installed, else an animated GIF
written by Pillow; the result says which); exports are binary PLY point clouds, or iso-surface meshes
(marching cubes of scikit-image) with ``--mesh``, written by this package's own writer (files open3d reads).
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

import torch

from lowrank_vision.core.files import atomic_path, write_json

from .config import DistillConfig, ExportConfig, FitImagesConfig, RenderConfig, cpu_distill_config, cpu_fit_config
from .metrics import comparison_figure

__all__ = ["cpu_fit_config", "cpu_distill_config", "default_scene", "make_scene_cmd", "train_cmd", "distill_cmd", "eval_cmd", "render_cmd", "export_cmd", "demo"]


def default_scene(cache: Optional[Path] = None) -> Path:
    """The generated default scene (64 px, 40/8/8 views), made once under ``cache``.

    The default folder is ``runs/nerf/make-scene``, where ``lowrank-nerf make-scene`` writes by default.
    """
    from lowrank_vision.datasets.nerf import SceneConfig, make_scene

    path = Path(cache) if cache is not None else Path("runs") / "nerf" / "make-scene"
    if not (path / "transforms.json").is_file():
        make_scene(path, SceneConfig())
    return path


def _scene(data: Optional[Path]) -> Path:
    if data is None:
        return default_scene()
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"--data: {data} does not exist (expected a folder with transforms.json or transforms_<split>.json)")
    return data


def make_scene_cmd(out: Path, scene_cfg) -> dict:
    from lowrank_vision.datasets.nerf import make_scene

    return make_scene(out, scene_cfg)


def train_cmd(data: Optional[Path], cfg: FitImagesConfig, out: Path, device: str = "cpu") -> dict:
    """Train a field on the train split, score it on val and test, write ``<out>/<kind>.safetensors`` + ``metrics.json``."""
    from lowrank_vision.datasets.nerf import read_transforms

    from .model import save_field
    from .recipes import evaluate, fit_images

    root = _scene(data)
    train, val, test = (read_transforms(root, s, cfg.render.background) for s in ("train", "val", "test"))
    field, info = fit_images(train, cfg, device, background=cfg.render.background)
    scores = {s: evaluate(field, d, cfg.render, cfg.render.background) for s, d in (("val", val), ("test", test))}
    ckpt = save_field(Path(out) / f"{cfg.field.kind}.safetensors", field, cfg.field, info["rig"],
                      {"data": str(root), "steps": info["steps"], "test_psnr": scores["test"]["psnr"]})
    result = {"checkpoint": str(ckpt), "field": cfg.field.kind, "params": info["params"], "steps": info["steps"],
              "seconds": round(info["seconds"], 2), "data": str(root),
              **{f"{s}_{m}": round(v[m], 4) for s, v in scores.items() for m in ("psnr", "ssim")}}
    write_json(Path(out) / "metrics.json", result | {"config": asdict(cfg)})
    return result


def distill_cmd(teacher: Path, cfg: DistillConfig, out: Path, device: str = "cpu", data: Optional[Path] = None) -> dict:
    """PVD from a teacher checkpoint; scores the student against the teacher's renders (and the test images if ``data``)."""
    from lowrank_vision.datasets.nerf import read_transforms

    from .model import load_field, random_poses, save_field
    from .recipes import distill, evaluate, render_views

    teacher_field, teacher_cfg, rig, _ = load_field(teacher, device)
    student, info = distill(teacher_field, rig, cfg, device)
    poses = random_poses(rig, 4, torch.Generator().manual_seed(12345))
    render = replace(cfg.render, background=rig.background)
    from .metrics import psnr

    t_imgs, s_imgs = render_views(teacher_field, rig, poses, render), render_views(student, rig, poses, render)
    result = {"teacher": str(teacher), "teacher_field": teacher_cfg.kind, "student_field": cfg.student.kind,
              "params": info["params"], "steps": info["steps"], "seconds": round(info["seconds"], 2),
              "stage_steps": info["stage_steps"], "stage1_skipped": info["stage1_skipped"], "teacher_renders": info["teacher_renders"],
              "psnr_vs_teacher": round(sum(psnr(s, t) for s, t in zip(s_imgs, t_imgs)) / len(t_imgs), 4)}
    if data is not None:
        test = read_transforms(_scene(data), "test", rig.background)
        ev = evaluate(student, test, render, rig.background)
        result |= {"test_psnr": round(ev["psnr"], 4), "test_ssim": round(ev["ssim"], 4)}
    ckpt = save_field(Path(out) / f"{cfg.student.kind}_from_{teacher_cfg.kind}.safetensors", student,
                      replace(cfg.student, bound=teacher_field.bound), rig,
                      {"distilled_from": str(teacher), **{k: v for k, v in result.items() if k != "stage_steps"}})
    result["checkpoint"] = str(ckpt)
    write_json(Path(out) / "metrics.json", result | {"config": asdict(cfg)})
    return result


def eval_cmd(checkpoint: Path, data: Optional[Path], out: Path, split: str = "test", render: RenderConfig = RenderConfig(),
             device: str = "cpu") -> dict:
    """PSNR / SSIM of a checkpoint on one split; writes ``metrics.json`` and a render-vs-truth PNG."""
    from lowrank_vision.datasets.nerf import read_transforms

    from .model import load_field
    from .recipes import evaluate

    field, cfg, rig, _ = load_field(checkpoint, device)
    d = read_transforms(_scene(data), split, rig.background)
    ev = evaluate(field, d, render, rig.background, keep_images=4)
    fig = comparison_figure([("ground truth", [torch.as_tensor(x) for x in d.images[:4]]), (cfg.kind, ev["renders"])],
                            Path(out) / f"eval_{split}.png")
    result = {"checkpoint": str(checkpoint), "field": cfg.kind, "split": split, "psnr": round(ev["psnr"], 4),
              "ssim": round(ev["ssim"], 4), "n_images": ev["n_images"], "figure": str(fig)}
    write_json(Path(out) / "metrics.json", result)
    return result


def _write_video(frames: list, path_stem: Path, fps: int = 12) -> Path:
    import numpy as np

    arrays = [(f.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8) for f in frames]
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (MP4 needs the ffmpeg binary it ships)

        target = path_stem.with_suffix(".mp4")
        with atomic_path(target) as tmp:
            imageio.mimwrite(tmp, arrays, fps=fps, format="FFMPEG", macro_block_size=1)
        return target
    except ImportError:
        from PIL import Image

        target = path_stem.with_suffix(".gif")
        with atomic_path(target) as tmp:
            imgs = [Image.fromarray(a) for a in arrays]
            imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
        return target


def render_cmd(checkpoint: Path, out: Path, n_frames: int = 24, elevation_deg: Optional[float] = None,
               render: RenderConfig = RenderConfig(), device: str = "cpu", size: Optional[int] = None) -> dict:
    """An orbit around the rig's target: PNG frames plus ``orbit.mp4`` (or ``orbit.gif`` without imageio-ffmpeg).

    ``size``: frame width in pixels (the intrinsics scale with it, so the field of view is the training cameras');
    default: the training images' size.
    """
    import math

    import numpy as np
    from PIL import Image

    from .model import load_field
    from .recipes import render_views

    if n_frames < 1:
        raise ValueError(f"--frames must be >= 1, got {n_frames}")
    if size is not None and not 8 <= size <= 4096:
        raise ValueError(f"--size must be in [8, 4096] pixels, got {size}")
    if elevation_deg is not None and not -89.0 <= elevation_deg <= 89.0:
        raise ValueError(f"--elevation must be in [-89, 89] degrees, got {elevation_deg}")
    field, cfg, rig, _ = load_field(checkpoint, device)
    if size is not None:
        scale = size / rig.width
        rig = replace(rig, width=size, height=max(1, round(rig.height * scale)), intrinsics=tuple(v * scale for v in rig.intrinsics))
    el = math.radians(elevation_deg if elevation_deg is not None else sum(rig.elevation_range) / 2)
    r = sum(rig.radius_range) / 2
    az = np.linspace(0, 2 * math.pi, n_frames, endpoint=False)
    target = np.asarray(rig.target)
    from lowrank_vision.datasets.nerf.procedural import look_at

    poses = torch.as_tensor(np.stack([look_at(target + r * np.array([math.cos(el) * math.cos(a), math.cos(el) * math.sin(a),
                                                                       math.sin(el)]), target) for a in az]), dtype=torch.float32)
    frames = render_views(field, rig, poses, render, progress=True)
    out = Path(out)
    for k, f in enumerate(frames):
        with atomic_path(out / "frames" / f"frame_{k:03d}.png") as tmp:
            Image.fromarray((f.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)).save(tmp, format="PNG")
    video = _write_video(frames, out / "orbit")
    return {"checkpoint": str(checkpoint), "frames": n_frames, "size": [rig.width, rig.height], "frames_dir": str(out / "frames"),
            "video": str(video), "video_format": video.suffix.lstrip(".")}


def export_cmd(checkpoint: Path, out: Path, cfg: ExportConfig = ExportConfig(), device: str = "cpu") -> dict:
    """The field's dense regions as a PLY: a point cloud (x, y, z, red, green, blue) or, with ``cfg.kind == "mesh"``,
    the iso-surface at the density threshold (marching cubes) with vertex colours; progress bar over the grid slices."""
    from lowrank_vision.core.files import write_ply

    from .model import load_field
    from .recipes import export_mesh, export_points

    field, fcfg, _, _ = load_field(checkpoint, device)
    common = {"checkpoint": str(checkpoint), "kind": cfg.kind, "resolution": cfg.resolution, "density_threshold": cfg.density_threshold}
    if cfg.kind == "mesh":
        verts, faces, cols = export_mesh(field, cfg)
        ply = write_ply(Path(out) / f"{fcfg.kind}_mesh.ply", verts, cols, faces)
        return {**common, "ply": str(ply), "vertices": int(verts.shape[0]), "faces": int(faces.shape[0])}
    pts, cols = export_points(field, cfg)
    if pts.shape[0] == 0:
        raise ValueError(f"--threshold {cfg.density_threshold}: no point of the field is that dense; lower it")
    ply = write_ply(Path(out) / f"{fcfg.kind}_points.ply", pts, cols)
    return {**common, "ply": str(ply), "points": int(pts.shape[0])}


def demo(out_dir: Path, device: str = "cpu") -> dict:
    """``lowrank demo``: the shipped hash teacher and TensoRF-VM student on the default scene's test views."""
    from lowrank_vision.datasets.nerf import SceneConfig, make_scene, read_transforms

    from .model import load_field
    from .recipes import count_params, evaluate
    from .weights import shipped_checkpoint

    out_dir = Path(out_dir)
    start = time.perf_counter()
    scene = out_dir / "scene"
    make_scene(scene, SceneConfig())
    test = read_transforms(scene, "test")
    render = RenderConfig(n_coarse=24, n_fine=24)
    rows, numbers = [("ground truth", [torch.as_tensor(x) for x in test.images[:4]])], {}
    for role in ("teacher", "student"):
        field, cfg, rig, _ = load_field(shipped_checkpoint(role), device)
        ev = evaluate(field, test, render, rig.background, keep_images=4)
        rows.append((f"{role}: {cfg.kind}", ev["renders"]))
        numbers[role] = {"field": cfg.kind, "params": count_params(field),
                         "test_psnr": round(ev["psnr"], 3), "test_ssim": round(ev["ssim"], 4)}
    fig = comparison_figure(rows, out_dir / "nerf_teacher_student.png")
    t, s = numbers["teacher"], numbers["student"]
    return {**numbers, "seconds": round(time.perf_counter() - start, 1),
            "figures": [{"path": str(fig), "caption": "Test views of the generated scene: ground truth, the hash-grid teacher, "
                         "and the TensoRF-VM student distilled from it by PVD (no training images)."}],
            "summary": (f"nerf_pvd: on the generated 64-px scene's 8 test views the shipped hash-grid teacher reaches "
                        f"PSNR {t['test_psnr']} dB / SSIM {t['test_ssim']}, and the TensoRF-VM student distilled from it "
                        f"with PVD (random poses, no images) {s['test_psnr']} dB / {s['test_ssim']}.")}

