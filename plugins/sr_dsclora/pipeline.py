"""End-to-end steps behind the ``lowrank-sr`` app; each writes JSON/PNG/weights into ``out_dir``."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional, Union

import torch

from lowrank_vision.datasets.sr_data import (
    BUNDLED_SPLIT,
    bicubic_downsample,
    bicubic_upsample,
    bundled_photos,
    load_eval_set,
    mod_crop,
    read_image,
    write_image,
)
from lowrank_vision.datasets.sr_metrics import psnr_y, ssim_y

from .distill import DSCLoRAConfig
from .io import checkpoint_extra, default_weights, export_onnx, load_span, save_span, save_span_format
from .recipes import SRTrainConfig, cost_report, evaluate, finetune_dsclora, finetune_full, train_span, upscale
from .report import plot_comparison, plot_history, write_json
from .span import count_params

__all__ = ["run_train", "run_finetune", "run_eval", "run_upscale", "run_export", "resolve_weights", "command_line"]


def command_line() -> str:
    """The command that is running, as a person would type it (recorded next to weights)."""
    prog = Path(sys.argv[0]).name
    prog = "lowrank-sr" if prog in ("sr.py", "__main__.py", "lowrank-sr") else prog
    return " ".join([prog, *map(shlex.quote, sys.argv[1:])])


def _data_description(cfg: SRTrainConfig) -> str:
    if cfg.data is None:
        return "bundled train photos: " + ", ".join(BUNDLED_SPLIT["train"])
    return f"HR folder {cfg.data}" + (f" with LR folder {cfg.lr_dir}" if cfg.lr_dir else " (bicubic LR)")


def resolve_weights(weights: Union[str, Path, None], kind: str, scale: int) -> Path:
    return Path(weights) if weights else default_weights(kind, scale)


def run_train(
    cfg: SRTrainConfig, out_dir: Union[str, Path], save: Optional[Union[str, Path]] = None, eval_dir: Optional[str] = None,
    init: Optional[Union[str, Path]] = None,
) -> dict:
    """Train SPAN (from scratch, or from ``init``), evaluate (default: the bundled eval photos),
    save weights + metrics + loss curve."""
    out_dir = Path(out_dir)
    start = None
    if init is not None:
        start = load_span(init)
        if start.scale != cfg.scale:
            raise ValueError(f"--init {init} is x{start.scale}, but --scale is {cfg.scale}")
        cfg.channels, cfg.train_form = start.config.channels, "deployed"
    model, result = train_span(cfg, model=start)
    images = load_eval_set(eval_dir, cfg.scale)
    scores = evaluate(model, images, cfg.scale, progress=cfg.progress)
    bicubic = evaluate(None, images, cfg.scale)
    summary = {
        "model": "SPAN", "scale": cfg.scale, "params": count_params(model), "steps": result.steps,
        "final_loss": result.final_loss, "eval_psnr": scores["psnr"], "eval_ssim": scores["ssim"],
        "bicubic_psnr": bicubic["psnr"], "bicubic_ssim": bicubic["ssim"], "per_image": scores["per_image"],
        "init": str(init) if init else None, "eval_data": eval_dir or "bundled eval photos", "train": cfg.to_dict(), "data": _data_description(cfg), "command": command_line(),
    }
    extra = {k: summary[k] for k in ("command", "data", "steps", "eval_psnr", "eval_ssim", "bicubic_psnr")}
    weights = save_span(model, save or out_dir / f"span_x{cfg.scale}.safetensors", extra=extra)
    summary["weights"] = str(weights)
    write_json(summary, out_dir / "metrics.json")
    plot_history(result.history, out_dir / "loss.png", title=f"SPAN x{cfg.scale} training (L1)")
    return summary


def run_finetune(
    cfg: SRTrainConfig,
    out_dir: Union[str, Path],
    teacher: Union[str, Path, None] = None,
    dsclora: bool = True,
    dsclora_cfg: Optional[DSCLoRAConfig] = None,
    save: Optional[Union[str, Path]] = None,
    eval_dir: Optional[str] = None,
) -> dict:
    """Fine-tune a SPAN with DSCLoRA (or, with ``dsclora=False``, every parameter: the control)."""
    out_dir = Path(out_dir)
    teacher_path = resolve_weights(teacher, "span", cfg.scale)
    base = load_span(teacher_path)
    if base.scale != cfg.scale:
        raise ValueError(f"teacher {teacher_path} is x{base.scale}, but --scale is {cfg.scale}")
    cfg.channels = base.config.channels
    if dsclora:
        student, result, reports = finetune_dsclora(base, cfg, dsclora_cfg)
        adapter = {"trainable_params": reports[-1].trainable_params, "wrapped": list(reports[-1].wrapped)}  # the last report covers both groups
        keys = ("loss", "l_rec", "l_ts", "l_ad")
    else:
        student, result = finetune_full(base, cfg)
        adapter = {"trainable_params": count_params(student), "wrapped": []}
        keys = ("loss",)
    images = load_eval_set(eval_dir, cfg.scale)
    before, after = evaluate(base, images, cfg.scale), evaluate(student, images, cfg.scale, progress=cfg.progress)
    method = "DSCLoRA" if dsclora else "full fine-tune"
    summary = {
        "method": method, "scale": cfg.scale, "teacher": str(teacher_path), "steps": result.steps,
        "teacher_psnr": before["psnr"], "teacher_ssim": before["ssim"], "eval_psnr": after["psnr"], "eval_ssim": after["ssim"],
        "delta_psnr": after["psnr"] - before["psnr"], "params_teacher": count_params(base), "params_student": count_params(student),
        "trainable_params": adapter["trainable_params"], "wrapped": adapter["wrapped"], "per_image": after["per_image"],
        "dsclora": (dsclora_cfg or DSCLoRAConfig()).to_dict() if dsclora else None, "eval_data": eval_dir or "bundled eval photos",
        "train": cfg.to_dict(), "data": _data_description(cfg), "command": command_line(),
    }
    name = "dsclora" if dsclora else "fullft"
    extra = {k: summary[k] for k in ("command", "data", "steps", "teacher_psnr", "eval_psnr", "eval_ssim")}
    summary["weights"] = str(save_span(student, save or out_dir / f"{name}_x{cfg.scale}.safetensors", extra=extra))
    write_json(summary, out_dir / "metrics.json")
    plot_history(result.history, out_dir / "loss.png", keys=keys, title=f"{method} x{cfg.scale}")
    return summary


def run_eval(source: Optional[str], weights: Union[str, Path, None], kind: str, scale: int, out_dir: Union[str, Path], tile: int = 0, cost: bool = True) -> dict:
    """PSNR/SSIM (Y, border = scale) of a checkpoint and of bicubic on a folder or the bundled photos."""
    path = resolve_weights(weights, kind, scale)
    model = load_span(path)
    if model.scale != scale:
        raise ValueError(f"weights {path} are x{model.scale}, but --scale is {scale}")
    images = load_eval_set(source, scale)
    scores, bicubic = evaluate(model, images, scale, tile=tile, progress=True), evaluate(None, images, scale)
    summary = {
        "weights": str(path), "data": source or "bundled eval photos: " + ", ".join(BUNDLED_SPLIT["eval"]), "scale": scale,
        "psnr": scores["psnr"], "ssim": scores["ssim"], "bicubic_psnr": bicubic["psnr"], "bicubic_ssim": bicubic["ssim"],
        "per_image": scores["per_image"], "bicubic_per_image": bicubic["per_image"],
    }
    if cost:
        summary["cost"] = cost_report(model, runtime_size=(128, 128), repeats=5)
    write_json(summary, Path(out_dir) / "eval.json")
    first = images[0]
    plot_comparison(
        [("bicubic", bicubic_upsample(first.lr[None], scale)[0]), (path.stem, upscale(model, first.lr)), ("HR", first.hr)],
        Path(out_dir) / f"compare_{first.name}.png",
    )
    return summary


def run_upscale(src: Optional[str], dst: Union[str, Path], weights: Union[str, Path, None], kind: str, scale: int, tile: int = 128) -> dict:
    """Upscale an image file; without ``src``, a bundled eval photo is down-scaled first and scored."""
    path = resolve_weights(weights, kind, scale)
    model = load_span(path)
    if model.scale != scale:
        raise ValueError(f"weights {path} are x{model.scale}, but --scale is {scale}")
    info: dict = {"weights": str(path), "scale": scale, "tile": tile}
    if src is None:
        name, hr = bundled_photos("eval")[0]
        hr = mod_crop(hr, scale)
        lr = bicubic_downsample(hr, scale)
        info["input"] = f"bundled eval photo {name!r}, bicubic x{scale} down-scaled"
    else:
        lr, hr = read_image(src), None
        info["input"] = str(src)
    sr = upscale(model, lr, tile=tile, progress=True)
    write_image(sr, dst)
    info.update({"output": str(dst), "lr_size": list(lr.shape[-2:]), "sr_size": list(sr.shape[-2:])})
    if hr is not None:
        info["psnr"] = psnr_y(sr[None], hr[None], scale)
        info["bicubic_psnr"] = psnr_y(bicubic_upsample(lr[None], scale), hr[None], scale)
        info["ssim"] = ssim_y(sr[None], hr[None], scale)
    write_json(info, Path(dst).with_suffix(".json"))
    return info


def run_export(weights: Union[str, Path, None], kind: str, scale: int, out_dir: Union[str, Path], onnx: bool = True) -> dict:
    """Write the SPAN-layout state dict (``.pth``), the deployed safetensors and ONNX; checks ONNX."""
    out_dir = Path(out_dir)
    path = resolve_weights(weights, kind, scale)
    model = load_span(path)
    stem = path.stem
    files = {
        "span_state_dict": str(save_span_format(model, out_dir / f"{stem}_span.pth")),
        "deployed": str(save_span(model, out_dir / f"{stem}.safetensors", extra=checkpoint_extra(path))),
    }
    info: dict = {"weights": str(path), "params": count_params(model), "files": files}
    if onnx:
        onnx_path = export_onnx(model, out_dir / f"{stem}.onnx")
        files["onnx"] = str(onnx_path)
        try:
            import onnxruntime as ort
        except ImportError:
            info["onnx_check"] = "onnxruntime not installed; not checked"
        else:
            x = torch.rand(1, 3, 40, 52)
            sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(sess.run(["sr"], {"lr": x.numpy()})[0])
            with torch.no_grad():
                ref = model(x)
            info["onnx_max_abs_diff"] = float((got - ref).abs().max())
    write_json(info, out_dir / "export.json")
    return info
