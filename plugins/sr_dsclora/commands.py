"""What each ``lowrank-sr`` subcommand does: ``(config, paths) -> result dict``; every output is a file.

``train``, ``finetune``, ``evaluate``, ``upscale``, ``export`` and the ``lowrank demo`` hook
:func:`demo`. Each writes JSON/PNG/weights into its output folder through
:mod:`lowrank_vision.core.files` and returns the numbers it wrote. No argparse here: the app
(:mod:`lowrank_vision.apps.sr`) builds the configs.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from lowrank_vision.core import count_parameters
from lowrank_vision.core.files import write_json
from lowrank_vision.datasets.images import (
    BUNDLED_SPLIT,
    ImageFile,
    bicubic_downsample,
    bicubic_upsample,
    bundled_photos,
    load_eval_set,
    mod_crop,
    read_image_file,
    write_image_file,
)

from . import recipes
from .config import DSCLoRAConfig, SRTrainConfig
from .metrics import plot_comparison, plot_history, psnr_y, ssim_y
from .weights import checkpoint_extra, default_weights, export_onnx, load_span, save_span, save_span_format

__all__ = ["train", "finetune", "evaluate", "upscale", "export", "make_data", "demo", "resolve_weights", "command_line"]

PathLike = Union[str, Path]
DEMO_CROP = (180, 180, 160)
"""``(y, x, size)`` of the HR crop shown by :func:`demo` (the astronaut's suit collar: edges and fine texture)."""


def command_line() -> str:
    """The command that is running, as a person would type it (recorded next to weights)."""
    prog = Path(sys.argv[0]).name
    prog = "lowrank-sr" if prog in ("sr.py", "__main__.py", "lowrank-sr") else prog
    return " ".join([prog, *map(shlex.quote, sys.argv[1:])])


def _params(model: torch.nn.Module) -> int:
    return count_parameters(model)[1]


def _data_description(cfg: SRTrainConfig) -> str:
    if cfg.data is None:
        return "bundled train photos: " + ", ".join(BUNDLED_SPLIT["train"])
    return f"HR folder {cfg.data}" + (f" with LR folder {cfg.lr_dir}" if cfg.lr_dir else " (bicubic LR)")


def _trainer_record(result) -> dict:
    """How ``fit`` ran the steps: CUDA-graph capture (or why not), the AdamW kernel, measured adapter strategies."""
    return {"cuda_graph": result.cuda_graph, "optimizer": result.optimizer, "strategies": result.strategies}


def resolve_weights(weights: Optional[PathLike], kind: str, scale: int) -> Path:
    """``weights`` if given, else the shipped ``<kind>_x<scale>.safetensors``."""
    return Path(weights) if weights else default_weights(kind, scale)


def _load(weights: Optional[PathLike], kind: str, scale: int) -> tuple[Path, torch.nn.Module]:
    path = resolve_weights(weights, kind, scale)
    model = load_span(path)
    if model.scale != scale:
        raise ValueError(f"--weights {path} is x{model.scale}, but --scale is {scale}")
    return path, model


def train(cfg: SRTrainConfig, out_dir: PathLike, save: Optional[PathLike] = None, eval_dir: Optional[str] = None,
          init: Optional[PathLike] = None) -> dict:
    """Train SPAN (from scratch, or from ``init``), evaluate (default: the bundled eval photos),
    write weights, ``metrics.json`` and ``loss.png``."""
    out_dir = Path(out_dir)
    start = None
    if init is not None:
        start = load_span(init)
        if start.scale != cfg.scale:
            raise ValueError(f"--init {init} is x{start.scale}, but --scale is {cfg.scale}")
        cfg = replace(cfg, channels=start.config.channels, train_form="deployed")
    images = load_eval_set(eval_dir, cfg.scale)  # read before training: a bad folder fails early
    model, result = recipes.train_span(cfg, model=start)
    scores = recipes.evaluate(model, images, cfg.scale, progress=cfg.train.progress)
    bicubic = recipes.evaluate(None, images, cfg.scale)
    summary = {
        "model": "SPAN", "scale": cfg.scale, "params": _params(model), "steps": result.steps,
        "final_loss": result.final_loss, "eval_psnr": scores["psnr"], "eval_ssim": scores["ssim"],
        "bicubic_psnr": bicubic["psnr"], "bicubic_ssim": bicubic["ssim"], "per_image": scores["per_image"],
        "init": str(init) if init else None, "eval_data": eval_dir or "bundled eval photos", "config": cfg.to_dict(),
        "data": _data_description(cfg), "command": command_line(), "trainer": _trainer_record(result),
    }
    extra = {k: summary[k] for k in ("command", "data", "steps", "eval_psnr", "eval_ssim", "bicubic_psnr")}
    summary["weights"] = str(save_span(model, save or out_dir / f"span_x{cfg.scale}.safetensors", extra=extra))
    write_json(out_dir / "metrics.json", summary)
    plot_history(result.history, out_dir / "loss.png", title=f"SPAN x{cfg.scale} training (L1)")
    return summary


def finetune(cfg: SRTrainConfig, out_dir: PathLike, teacher: Optional[PathLike] = None,
             dsclora: Optional[DSCLoRAConfig] = DSCLoRAConfig(), save: Optional[PathLike] = None,
             eval_dir: Optional[str] = None) -> dict:
    """Fine-tune a SPAN with DSCLoRA, or with ``dsclora=None`` every parameter (the control)."""
    out_dir = Path(out_dir)
    teacher_path = resolve_weights(teacher, "span", cfg.scale)
    base = load_span(teacher_path)
    if base.scale != cfg.scale:
        raise ValueError(f"--teacher {teacher_path} is x{base.scale}, but --scale is {cfg.scale}")
    cfg = replace(cfg, channels=base.config.channels)
    images = load_eval_set(eval_dir, cfg.scale)
    if dsclora is not None:
        student, result, reports = recipes.finetune_dsclora(base, cfg, dsclora)
        trainable, wrapped = reports[-1].trainable_params, list(reports[-1].wrapped)  # the last report covers both groups
        keys = ("loss", "l_rec", "l_ts", "l_ad")
    else:
        student, result = recipes.finetune_full(base, cfg)
        trainable, wrapped, keys = _params(student), [], ("loss",)
    before, after = recipes.evaluate(base, images, cfg.scale), recipes.evaluate(student, images, cfg.scale, progress=cfg.train.progress)
    method = "DSCLoRA" if dsclora is not None else "full fine-tune"
    summary = {
        "method": method, "scale": cfg.scale, "teacher": str(teacher_path), "steps": result.steps,
        "teacher_psnr": before["psnr"], "teacher_ssim": before["ssim"], "eval_psnr": after["psnr"], "eval_ssim": after["ssim"],
        "delta_psnr": after["psnr"] - before["psnr"], "params_teacher": _params(base), "params_student": _params(student),
        "trainable_params": trainable, "wrapped": wrapped, "per_image": after["per_image"],
        "dsclora": dsclora.to_dict() if dsclora is not None else None, "eval_data": eval_dir or "bundled eval photos",
        "config": cfg.to_dict(), "data": _data_description(cfg), "command": command_line(), "trainer": _trainer_record(result),
    }
    name = "dsclora" if dsclora is not None else "fullft"
    extra = {k: summary[k] for k in ("command", "data", "steps", "teacher_psnr", "eval_psnr", "eval_ssim")}
    summary["weights"] = str(save_span(student, save or out_dir / f"{name}_x{cfg.scale}.safetensors", extra=extra))
    write_json(out_dir / "metrics.json", summary)
    plot_history(result.history, out_dir / "loss.png", keys=keys, title=f"{method} x{cfg.scale}")
    return summary


def evaluate(out_dir: PathLike, source: Optional[str] = None, weights: Optional[PathLike] = None, kind: str = "dsclora",
             scale: int = 4, tile: int = 0, cost: bool = True, device: str = "cpu") -> dict:
    """Y-PSNR/SSIM (border = scale) of a checkpoint and of bicubic on a folder or the bundled eval photos;
    writes ``eval.json`` and ``compare_<first image>.png``."""
    path, model = _load(weights, kind, scale)
    images = load_eval_set(source, scale)
    model = model.to(device)
    scores, bicubic = recipes.evaluate(model, images, scale, tile=tile, progress=True), recipes.evaluate(None, images, scale)
    summary = {
        "weights": str(path), "data": source or "bundled eval photos: " + ", ".join(BUNDLED_SPLIT["eval"]), "scale": scale,
        "psnr": scores["psnr"], "ssim": scores["ssim"], "bicubic_psnr": bicubic["psnr"], "bicubic_ssim": bicubic["ssim"],
        "per_image": scores["per_image"], "bicubic_per_image": bicubic["per_image"],
    }
    if cost:
        summary["cost"] = recipes.cost_report(model, runtime_size=(128, 128), repeats=5)
        summary["cost"]["device"] = device
    write_json(Path(out_dir) / "eval.json", summary)
    first = images[0]
    plot_comparison(
        [("bicubic", bicubic_upsample(first.lr[None], scale)[0]), (path.stem, recipes.upscale(model, first.lr)), ("HR", first.hr)],
        Path(out_dir) / f"compare_{first.name}.png",
    )
    return summary


def upscale(out_dir: PathLike, src: Optional[PathLike] = None, dst: Optional[PathLike] = None, weights: Optional[PathLike] = None,
            kind: str = "dsclora", scale: int = 4, tile: int = 128, device: str = "cpu") -> dict:
    """Upscale an image file to ``dst`` (default ``out_dir/<stem>_x<scale>.png``) plus a JSON beside it;
    without ``src``, a bundled eval photo is down-scaled first and the result scored against it.

    The output keeps the input's mode: a grey image comes back grey (the network runs on the grey
    repeated to RGB; the output is the mean of its three channels), an alpha channel is upscaled
    alongside (bicubic, clamped), and a 16-bit file stays 16-bit (read and written without 8-bit rounding).
    A progress bar counts the tiles of images larger than one tile."""
    path, model = _load(weights, kind, scale)
    info: dict = {"weights": str(path), "scale": scale, "tile": tile}
    if src is None:
        name, hr = bundled_photos("eval")[0]
        hr = mod_crop(hr, scale)
        image = ImageFile(rgb=bicubic_downsample(hr, scale))
        info["input"] = f"bundled eval photo {name!r}, bicubic x{scale} down-scaled"
    else:
        name, image, hr = Path(src).stem, read_image_file(src), None
        info["input"] = str(src)
    lr = image.rgb
    dst = Path(dst) if dst is not None else Path(out_dir) / f"{name}_x{scale}.png"
    sr = recipes.upscale(model.to(device), lr, tile=tile, progress=True)
    alpha = None if image.alpha is None else bicubic_upsample(image.alpha[None], scale)[0]
    write_image_file(ImageFile(rgb=sr, alpha=alpha, grey=image.grey, bits=image.bits), dst)
    info.update({"output": str(dst), "lr_size": list(lr.shape[-2:]), "sr_size": list(sr.shape[-2:]),
                 "mode": {"grey": image.grey, "alpha": image.alpha is not None, "bits": image.bits}})
    if hr is not None:
        info["psnr"] = psnr_y(sr[None], hr[None], scale)
        info["bicubic_psnr"] = psnr_y(bicubic_upsample(lr[None], scale), hr[None], scale)
        info["ssim"] = ssim_y(sr[None], hr[None], scale)
    write_json(dst.with_suffix(".json"), info)
    return info


def export(out_dir: PathLike, weights: Optional[PathLike] = None, kind: str = "dsclora", scale: int = 4, onnx: bool = True) -> dict:
    """Write the SPAN-layout state dict (``.pth``), the deployed safetensors and ONNX; checks ONNX."""
    out_dir = Path(out_dir)
    path, model = _load(weights, kind, scale)
    stem = path.stem
    files = {
        "span_state_dict": str(save_span_format(model, out_dir / f"{stem}_span.pth")),
        "deployed": str(save_span(model, out_dir / f"{stem}.safetensors", extra=checkpoint_extra(path))),
    }
    info: dict = {"weights": str(path), "params": _params(model), "files": files}
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
    write_json(out_dir / "export.json", info)
    return info


def demo(out_dir: PathLike, device: str = "cpu") -> dict:
    """Shipped x4 SPAN and DSCLoRA vs bicubic on the bundled eval photos (Y-PSNR/SSIM), and a PNG of
    crops bicubic / SPAN / DSCLoRA / original HR of the first photo (astronaut). About 10 s on a CPU."""
    out_dir = Path(out_dir)
    images = load_eval_set(None, 4)
    first = images[0]
    metrics: dict = {"scale": 4, "eval_images": [im.name for im in images]}
    panels, per_image = [("bicubic", bicubic_upsample(first.lr[None], 4)[0])], {}
    bicubic = recipes.evaluate(None, images, 4)
    per_image["bicubic"] = bicubic["per_image"][0]["psnr"]
    metrics["bicubic_psnr"], metrics["bicubic_ssim"] = bicubic["psnr"], bicubic["ssim"]
    for kind, label in (("span", "SPAN"), ("dsclora", "DSCLoRA")):
        model = load_span(default_weights(kind, 4)).to(device)
        scores = recipes.evaluate(model, images, 4)
        metrics[f"{kind}_psnr"], metrics[f"{kind}_ssim"], metrics[f"{kind}_params"] = scores["psnr"], scores["ssim"], _params(model)
        per_image[label] = scores["per_image"][0]["psnr"]
        panels.append((label, recipes.upscale(model, first.lr).cpu()))
    titles = [f"{name} ({per_image[name]:.3f} dB)" for name, _ in panels]
    panels = [(t, img) for t, (_, img) in zip(titles, panels)] + [("original HR", first.hr)]
    figure = plot_comparison(panels, out_dir / "sr_crops.png", crop=DEMO_CROP)
    gain = metrics["dsclora_psnr"] - metrics["span_psnr"]
    metrics["figures"] = [{"path": str(figure), "caption": (
        f"x4 crops of the '{first.name}' photo (never used in training): bicubic, the shipped SPAN, the shipped "
        "SPAN + DSCLoRA (merged, same 130,828 parameters) and the original; titles give that image's Y-PSNR.")}]
    metrics["summary"] = (
        f"The shipped x4 SPAN and its DSCLoRA fine-tune upscaled the {len(images)} bundled evaluation photos "
        f"(bicubic-down-scaled x4, never used in training) on the {device.upper() if device == 'cpu' else device}: mean Y-PSNR "
        f"bicubic {metrics['bicubic_psnr']:.2f} dB, SPAN {metrics['span_psnr']:.3f} dB, DSCLoRA {metrics['dsclora_psnr']:.3f} dB "
        f"({gain:+.4f} dB over SPAN with identical parameters and FLOPs). Both networks beat bicubic by about "
        f"{metrics['span_psnr'] - metrics['bicubic_psnr']:.1f} dB; the DSCLoRA gain over its teacher is small.")
    write_json(out_dir / "sr_demo.json", metrics)
    return metrics


def make_data(out_dir: PathLike, roots: Optional[list] = None, images: Optional[PathLike] = None, crop: int = 320,
              extra_train: Optional[Sequence[str]] = None) -> dict:
    """Build the train / validation / evaluation photo sets (:func:`lowrank_vision.datasets.images.catalogue.build_sr_data`)
    under ``out_dir``; ``train/`` and ``val/`` then go to ``--data`` / ``--eval-dir`` of ``train`` and ``finetune``.
    ``extra_train``: catalogue sources of role ``extra`` to add to training (e.g. ``plasma``)."""
    from lowrank_vision.datasets.images.catalogue import build_sr_data

    return build_sr_data(out_dir, roots=roots or ("/",), images=images, crop=crop, extra_train=extra_train or ())
