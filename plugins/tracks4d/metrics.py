"""Metrics of a reconstruction against ground truth, and plots.

As in TracksTo4D's evaluation: depth AbsRel and δ < 1.25 after **per-frame median scaling** (on the
visible track points; also split into static and dynamic points), camera ATE (RMSE of camera centres)
after a similarity (Umeyama Sim(3)) alignment of the centres, RPE between consecutive frames
(translation after the same scale, rotation in degrees), and the mean reprojection error in pixels.
Units of ATE/RPE-T are those of the ground-truth scene.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["depth_metrics", "depth_correlation", "umeyama", "camera_centers", "pose_metrics", "score", "plot_reconstruction", "plot_comparison"]


def depth_metrics(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict:
    """AbsRel and δ<1.25 of [T, N] depths after scaling each frame by median(gt)/median(pred) over ``mask``."""
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    rel, good = [], []
    for t in range(pred.shape[0]):
        m = mask[t] & (gt[t] > 0)
        if not m.any():
            continue
        p, g = pred[t, m], gt[t, m]
        med = np.median(p)
        scaled = p * (np.median(g) / med) if med > 0 else np.full_like(p, 1e-6)
        scaled = np.maximum(scaled, 1e-6)
        rel.append(np.abs(scaled - g) / g)
        good.append(np.maximum(scaled / g, g / scaled) < 1.25)
    if not rel:
        return {"abs_rel": float("nan"), "delta_1_25": float("nan")}
    return {"abs_rel": float(np.concatenate(rel).mean()), "delta_1_25": float(np.concatenate(good).mean())}


def depth_correlation(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """Mean over frames of the Pearson correlation of predicted and true depth over ``mask`` (scale-free; near -1 when
    the depth ordering is reversed, near 0 for a flat prediction)."""
    corr = []
    for t in range(pred.shape[0]):
        m = mask[t] & (gt[t] > 0)
        if m.sum() >= 3 and np.std(pred[t, m]) > 0 and np.std(gt[t, m]) > 0:
            corr.append(np.corrcoef(np.asarray(pred[t, m], np.float64), np.asarray(gt[t, m], np.float64))[0, 1])
    return float(np.mean(corr)) if corr else float("nan")


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising ``Σ |dst - (s R src + t)|²`` for [M, 3] point sets (Umeyama 1991)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1
    R = U @ D @ Vt
    var = (xs ** 2).sum() / len(src)
    s = float(np.trace(np.diag(S) @ D) / var) if with_scale and var > 0 else 1.0
    return s, R, mu_d - s * R @ mu_s


def camera_centers(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """World positions of world->camera poses: c = -Rᵀ t, [T, 3]."""
    return -np.einsum("tji,tj->ti", R, t)


def pose_metrics(R: np.ndarray, t: np.ndarray, R_gt: np.ndarray, t_gt: np.ndarray) -> dict:
    """ATE after Sim(3) alignment of the camera centres; RPE (translation, rotation in degrees) of consecutive frames."""
    c, c_gt = camera_centers(R, t), camera_centers(R_gt, t_gt)
    s, Ra, ta = umeyama(c, c_gt)
    aligned = s * c @ Ra.T + ta
    ate = float(np.sqrt(((aligned - c_gt) ** 2).sum(1).mean()))
    trans, rot = [], []
    for i in range(len(R) - 1):
        # relative motion in camera i's frame: x_{i+1} = R_rel x_i + t_rel
        R_rel, R_rel_gt = R[i + 1] @ R[i].T, R_gt[i + 1] @ R_gt[i].T
        t_rel, t_rel_gt = t[i + 1] - R_rel @ t[i], t_gt[i + 1] - R_rel_gt @ t_gt[i]
        trans.append(np.linalg.norm(s * t_rel - t_rel_gt))
        cos = (np.trace(R_rel.T @ R_rel_gt) - 1) / 2
        rot.append(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return {"ate": ate, "rpe_trans": float(np.mean(trans)), "rpe_rot_deg": float(np.mean(rot)), "sim3_scale": s}


def score(recon: dict, ts) -> dict:
    """Every metric of a reconstruction (dict written by ``recipes.reconstruct``) against ``ts.gt``."""
    gt = ts.gt
    vis = ts.visible
    out = {"reprojection_px": recon["reprojection_px"]}
    if "gt_depth" in gt:
        out.update({f"depth_{k}": v for k, v in depth_metrics(recon["depth"], gt["gt_depth"], vis).items()})
        out["depth_corr"] = depth_correlation(recon["depth"], gt["gt_depth"], vis)
        if "gt_dynamic" in gt:
            dyn = np.broadcast_to(gt["gt_dynamic"][None], vis.shape)
            for name, m in (("static", vis & ~dyn), ("dynamic", vis & dyn)):
                if m.any():
                    out[f"depth_abs_rel_{name}"] = depth_metrics(recon["depth"], gt["gt_depth"], m)["abs_rel"]
    if "gt_R" in gt and "gt_t" in gt:
        out.update(pose_metrics(recon["R"].astype(np.float64), recon["t"].astype(np.float64), gt["gt_R"], gt["gt_t"]))
    return out


def plot_reconstruction(recon: dict, tracks: np.ndarray, visible: np.ndarray, path: Path, title: str = "",
                        dynamic: Optional[np.ndarray] = None) -> Path:
    """Preview PNG: observed vs re-projected tracks (first/last frame), top view of the points and cameras, depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lowrank_vision.core.files import save_figure

    T = tracks.shape[0]
    R, t, pts, focal = recon["R"], recon["t"], recon["points"], recon["focal"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    for ax, fr in zip(axes[:2], (0, T - 1)):
        cam = pts[fr] @ R[fr].T + t[fr]
        v = visible[fr]
        cx = np.median(tracks[fr, v, 0] - focal[fr] * cam[v, 0] / np.maximum(cam[v, 2], 1e-6)) if v.any() else 0.0
        cy = np.median(tracks[fr, v, 1] - focal[fr] * cam[v, 1] / np.maximum(cam[v, 2], 1e-6)) if v.any() else 0.0
        proj = focal[fr] * cam[:, :2] / np.maximum(cam[:, 2:], 1e-6) + [cx, cy]
        ax.scatter(tracks[fr, v, 0], tracks[fr, v, 1], s=10, c="tab:blue", label="track")
        ax.scatter(proj[v, 0], proj[v, 1], s=6, c="tab:red", marker="x", label="re-projection")
        ax.invert_yaxis()
        ax.set_title(f"frame {fr}")
        ax.legend(fontsize=7, loc="lower right")
    centers = camera_centers(R.astype(np.float64), t.astype(np.float64))
    mid = T // 2
    colors = "tab:gray" if dynamic is None else np.where(dynamic, "tab:orange", "tab:gray")
    axes[2].scatter(pts[mid, :, 0], pts[mid, :, 2], s=5, c=colors)
    axes[2].plot(centers[:, 0], centers[:, 2], "k.-", ms=3, label="cameras")
    axes[2].set_xlabel("x")
    axes[2].set_ylabel("z")
    axes[2].set_title(f"top view, frame {mid}" + (" (orange: moving)" if dynamic is not None else ""))
    axes[2].legend(fontsize=7)
    keep = np.isfinite(pts[mid]).all(1)
    if keep.sum() > 10:  # frame the bulk of the points (a few far ones would squash the view)
        (x0, x1), (z0, z1) = np.percentile(pts[mid, keep, 0], [2, 98]), np.percentile(pts[mid, keep, 2], [2, 98])
        x0, x1 = min(x0, centers[:, 0].min()), max(x1, centers[:, 0].max())
        z0, z1 = min(z0, centers[:, 2].min()), max(z1, centers[:, 2].max())
        pad = 0.1 * max(x1 - x0, z1 - z0, 1e-6)
        axes[2].set_xlim(x0 - pad, x1 + pad)
        axes[2].set_ylim(z0 - pad, z1 + pad)
    v = visible[mid]
    dv = recon["depth"][mid, v]
    lo, hi = np.percentile(dv, [2, 98]) if v.any() else (0.0, 1.0)
    sc = axes[3].scatter(tracks[mid, v, 0], tracks[mid, v, 1], c=dv, s=12, cmap="viridis", vmin=lo, vmax=hi)
    axes[3].invert_yaxis()
    axes[3].set_title(f"predicted depth, frame {mid}")
    fig.colorbar(sc, ax=axes[3])
    fig.suptitle(title or f"reprojection error {recon['reprojection_px']:.2f} px")
    return save_figure(fig, path)


def plot_comparison(summary: dict, path: Path, title: str = "") -> Path:
    """Bar charts of depth AbsRel, ATE and runtime per method (``summary[method][metric]`` = mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lowrank_vision.core.files import save_figure

    methods = list(summary)
    keys = [("depth_abs_rel", "depth AbsRel"), ("ate", "ATE"), ("reprojection_px", "reprojection (px)"), ("seconds", "runtime (s, log)")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for ax, (k, label) in zip(axes, keys):
        vals = [summary[m].get(k, np.nan) for m in methods]
        ax.bar(range(len(methods)), vals, color=["tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:gray"][: len(methods)])
        ax.set_xticks(range(len(methods)), methods, rotation=20, fontsize=8)
        ax.set_title(label)
        if k == "seconds":
            ax.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def _reprojection(recon: dict, K: np.ndarray, t: int) -> np.ndarray:
    """Pixels [N, 2] of frame ``t``'s points under the reconstructed camera (principal point of ``K``)."""
    cam = recon["points"][t] @ recon["R"][t].T + recon["t"][t]
    return recon["focal"][t] * cam[:, :2] / np.maximum(cam[:, 2:], 1e-6) + K[:2, 2]


def render_preview_frames(recon: dict, tracks: np.ndarray, visible: np.ndarray, K: np.ndarray, image_size: tuple[int, int],
                          images: Optional[list] = None, dynamic: Optional[np.ndarray] = None, title: str = "") -> list[np.ndarray]:
    """One RGB uint8 picture per frame: observed tracks and their re-projections over the frame (or a blank canvas),
    and a top view of that frame's points with the camera path (current camera in red). Same size for every frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = tracks.shape[0]
    H, W = image_size
    pts = recon["points"]
    centers = camera_centers(recon["R"].astype(np.float64), recon["t"].astype(np.float64))
    finite = np.isfinite(pts).all(-1)
    (x0, x1), (z0, z1) = np.percentile(pts[..., 0][finite], [2, 98]), np.percentile(pts[..., 2][finite], [2, 98])
    x0, x1 = min(x0, centers[:, 0].min()), max(x1, centers[:, 0].max())
    z0, z1 = min(z0, centers[:, 2].min()), max(z1, centers[:, 2].max())
    pad = 0.1 * max(x1 - x0, z1 - z0, 1e-6)
    colors = "tab:gray" if dynamic is None else np.where(dynamic, "tab:orange", "tab:gray")
    out = []
    for t in range(T):
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), dpi=72)
        if images is not None:
            a.imshow(images[t], cmap="gray", extent=(0, W, H, 0))
        v = visible[t]
        proj = _reprojection(recon, K, t)
        err = np.linalg.norm(proj[v] - tracks[t, v], axis=1).mean() if v.any() else float("nan")
        a.scatter(tracks[t, v, 0], tracks[t, v, 1], s=9, c="tab:blue", label="track")
        a.scatter(proj[v, 0], proj[v, 1], s=7, c="tab:red", marker="x", label="re-projection")
        a.set_xlim(0, W)
        a.set_ylim(H, 0)
        a.set_title(f"frame {t}: {v.sum()} tracks, reprojection {err:.2f} px", fontsize=9)
        a.legend(fontsize=7, loc="lower right")
        b.scatter(pts[t, :, 0], pts[t, :, 2], s=4, c=colors)
        b.plot(centers[:, 0], centers[:, 2], "k.-", ms=2, lw=0.8)
        b.plot(centers[t, 0], centers[t, 2], "o", c="tab:red", ms=6)
        b.set_xlim(x0 - pad, x1 + pad)
        b.set_ylim(z0 - pad, z1 + pad)
        b.set_xlabel("x")
        b.set_ylabel("z")
        b.set_title("top view" + (" (orange: moving)" if dynamic is not None else ""), fontsize=9)
        fig.suptitle(title, fontsize=10)
        fig.canvas.draw()
        out.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
        plt.close(fig)
    return out


def _write_h264(frames: list[np.ndarray], tmp: Path, fps: float) -> str:
    import imageio_ffmpeg  # ffmpeg binary with libx264: browser-playable H.264

    h, w = frames[0].shape[:2]
    gen = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=1,
                                      ffmpeg_log_level="error")
    gen.send(None)
    for f in frames:
        gen.send(np.ascontiguousarray(f))
    gen.close()
    return "imageio-ffmpeg-h264"


def _write_mp4v(frames: list[np.ndarray], tmp: Path, fps: float) -> str:
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise OSError("OpenCV VideoWriter cannot open an mp4v stream")
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    return "opencv-mp4v"


def write_preview_video(frames: list[np.ndarray], path: Path, fps: float = 6.0) -> dict:
    """MP4 of RGB frames: H.264 through imageio-ffmpeg when installed (plays in browsers), else MPEG-4 Part 2 through
    OpenCV (``mp4v``; plays in VLC/ffplay); with neither, the frames as PNGs in ``<path without suffix>_frames/``.
    Returns ``{"path", "writer", "frames"}``."""
    from lowrank_vision.core.files import atomic_dir, atomic_path

    path = Path(path)
    h, w = (frames[0].shape[0] // 2) * 2, (frames[0].shape[1] // 2) * 2  # even sizes for the codecs
    even = [f[:h, :w] for f in frames]
    for writer in (_write_h264, _write_mp4v):
        try:
            with atomic_path(path) as tmp:
                name = writer(even, tmp, fps)
                if tmp.stat().st_size == 0:
                    raise OSError(f"{name} wrote an empty video")
            return {"path": str(path), "writer": name, "frames": len(frames)}
        except (ImportError, OSError, RuntimeError):
            continue
    import matplotlib.image

    folder = path.with_name(path.stem + "_frames")
    with atomic_dir(folder) as tmp:
        for i, f in enumerate(frames):
            matplotlib.image.imsave(tmp / f"frame_{i:04d}.png", f)
    return {"path": str(folder), "writer": "png-frames", "frames": len(frames)}
