"""Size, compute and speed of the detectors, ONNX export checked in onnxruntime, and plots.

* Parameters: every tensor of the (unfused) model.
* FLOPs: ``torch.utils.flop_counter`` on one forward pass (convolutions and matrix products,
  ``2 * MACs`` as ultralytics' GFLOPs) plus the selective scan's element-wise work counted from
  its shapes (``6 * K * E * N * L`` per SS2D: decay exp, two multiply-adds for the state and one
  for the read-out), which the counter does not see.
* CPU latency: median wall time of a batch-1 forward pass at ``imgsz`` with ``threads`` CPU
  threads, in ``torch.inference_mode``, after warm-up; models that are compared are timed in
  interleaved rounds (:func:`interleaved_cpu_latency`), with the spread.
* ONNX: ``torch.onnx.export`` (TorchScript exporter, opset 17; the scan runs in its chunked
  form while exporting) and the largest absolute difference from PyTorch in onnxruntime.

mAP comes from ultralytics' validator (:func:`.recipes.evaluate`).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from lowrank_vision.core.files import atomic_path, save_figure

from .model import ss2d_modules

__all__ = ["count_flops", "cpu_latency", "interleaved_cpu_latency", "export_onnx", "onnx_max_difference", "plot_detections",
           "plot_tradeoff", "ExportWrapper"]


class ExportWrapper(nn.Module):
    """The detector's inference output only (``[B, 4 + nc, anchors]``), for export and timing."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return y[0] if isinstance(y, (tuple, list)) else y


def _channels(model: nn.Module) -> int:
    return int(getattr(model, "yaml", {}).get("channels", 4))


@torch.no_grad()
def count_flops(model: nn.Module, imgsz: int, channels: Optional[int] = None) -> dict:
    """``{"gflops": conv/matmul GFLOPs, "scan_gflops": selective-scan GFLOPs, "total_gflops": both}`` at ``imgsz``."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    x = torch.zeros(1, channels or _channels(model), imgsz, imgsz)
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=name: shapes.__setitem__(n, (mod, inp[0].shape)))
             for name, m in ss2d_modules(model)]
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    scan = sum(6 * 4 * m.inner * m.d_state * shape[-2] * shape[-1] for m, shape in shapes.values())
    dense = counter.get_total_flops()
    return {"gflops": dense / 1e9, "scan_gflops": scan / 1e9, "total_gflops": (dense + scan) / 1e9}


@torch.inference_mode()
def interleaved_cpu_latency(models: Mapping[str, nn.Module], imgsz: int = 640, threads: int = 2, warmup: int = 1,
                            rounds: int = 3, channels: Optional[int] = None) -> dict[str, dict]:
    """CPU latency (ms) of batch-1 forward passes, the models timed in turn for ``rounds`` rounds (rotating order).

    Interleaving makes every model see the same background load (on a shared machine a model timed
    alone in a quiet or a busy minute would be favoured or penalised); each model gets the median
    over rounds (``latency_ms``), the spread (``min_ms``, ``max_ms``) and every run.
    """
    if not models:
        raise ValueError("interleaved_cpu_latency: models must name at least one model")
    wrapped = {k: ExportWrapper(m.float().eval().cpu()) for k, m in models.items()}
    first = next(iter(models.values()))
    x = torch.rand(1, channels or _channels(first), imgsz, imgsz)
    names = list(wrapped)
    times = {k: [] for k in names}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            for m in wrapped.values():
                m(x)
        for r in range(rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:
                t0 = time.perf_counter()
                wrapped[k](x)
                times[k].append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_num_threads(before)
    return {k: {"latency_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "latency_runs_ms": v,
                "imgsz": imgsz, "threads": threads, "rounds": rounds} for k, v in times.items()}


def cpu_latency(model: nn.Module, imgsz: int = 640, threads: int = 2, warmup: int = 1, repeats: int = 3,
                channels: Optional[int] = None) -> dict:
    """Median CPU latency (ms) of a batch-1 forward pass at ``imgsz`` with ``threads`` threads."""
    return interleaved_cpu_latency({"model": model}, imgsz, threads, warmup, repeats, channels)["model"]


@torch.no_grad()
def export_onnx(model: nn.Module, path: Path, imgsz: int, channels: Optional[int] = None, opset: int = 17) -> Path:
    """Export the detector (inference output) to ONNX at a fixed ``imgsz`` (written atomically)."""
    import warnings

    wrapper = ExportWrapper(model.float().eval().cpu())
    x = torch.rand(1, channels or _channels(model), imgsz, imgsz)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (x,), str(tmp), input_names=["images"], output_names=["output0"], opset_version=opset,
                          dynamo=False, do_constant_folding=True)
    return Path(path)


@torch.no_grad()
def onnx_max_difference(model: nn.Module, onnx_path: Path, imgsz: int, channels: Optional[int] = None, seed: int = 0) -> dict:
    """Run the ONNX file in onnxruntime (CPU) and PyTorch on the same random input; largest absolute difference."""
    import onnxruntime as ort

    x = torch.rand(1, channels or _channels(model), imgsz, imgsz, generator=torch.Generator().manual_seed(seed))
    ref = ExportWrapper(model.float().eval().cpu())(x).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    if out.shape != ref.shape:
        raise ValueError(f"onnx output shape {out.shape} differs from PyTorch {ref.shape}")
    diff = float(np.abs(out - ref).max())
    return {"max_abs_diff": diff, "max_abs_value": float(np.abs(ref).max()), "output_shape": list(ref.shape)}


def plot_detections(image: np.ndarray, boxes: np.ndarray, classes: Sequence[int], scores: Sequence[float], names: dict,
                    path: Path, truth: Optional[np.ndarray] = None) -> Path:
    """RGB and thermal panels of a 4-channel image with predicted boxes (and true boxes dashed) -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = ["#00e5ff", "#76ff03", "#ff4081", "#ffea00", "#ff9100", "#d500f9"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    axes[0].imshow(image[..., :3])
    axes[0].set_title("RGB")
    axes[1].imshow(image[..., 3] if image.shape[-1] > 3 else image[..., 0], cmap="inferno")
    axes[1].set_title("thermal")
    for ax in axes:
        for (x0, y0, x1, y1) in (truth if truth is not None else []):
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls="--", lw=1, color="white"))
        for (x0, y0, x1, y1), c, s in zip(boxes, classes, scores):
            col = colours[int(c) % len(colours)]
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5, color=col))
            ax.text(x0, y0 - 1, f"{names.get(int(c), c)} {s:.2f}", color=col, fontsize=7, va="bottom")
        ax.axis("off")
    return save_figure(fig, path)


def plot_tradeoff(rows: list[dict], path: Path, title: str = "") -> Path:
    """mAP50 against CPU latency, one labelled point per model -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in rows:
        ax.scatter(r["latency_ms"], r["mAP50"], s=40)
        ax.annotate(r["name"], (r["latency_ms"], r["mAP50"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("CPU latency, batch 1 (ms)")
    ax.set_ylabel("mAP50")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
