"""What each ``lowrank-diffusion`` subcommand does: (config, paths) -> result dict. No argparse here."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional, Sequence

from lowrank_vision.core import load, save
from lowrank_vision.core.files import write_json
from lowrank_vision.datasets.diffusion.procedural import make_split

from .config import FinetuneConfig, PretrainConfig, SampleConfig
from .metrics import concept_score, generate, plot_grid, plot_losses, prompt_fidelity

__all__ = ["pretrain_base", "train", "sample", "export", "compare", "demo", "equal_budget_rank", "GRID_PROMPTS"]

GRID_PROMPTS = ["a checkered red circle on the left", "a checkered blue square in the centre", "a checkered yellow triangle at the top",
                "a striped green circle on the right", "a plain blue triangle at the bottom"]
"""Prompts of every sample grid: three of the new texture, two base prompts (forgetting)."""


def _base(base_dir: Optional[Path], device: str):
    from .weights import load_base

    return load_base(base_dir, device)


def _classifier(base_dir: Optional[Path]):
    from .weights import DEFAULT_WEIGHTS, load_classifier

    directory = base_dir if base_dir is not None and (Path(base_dir) / "scene_classifier.safetensors").is_file() else DEFAULT_WEIGHTS
    return load_classifier(directory)


def pretrain_base(config: PretrainConfig, out_dir: Path, device: str = "cpu", classifier_steps: int = 300, command: str = "") -> dict:
    """Pre-train the small base pipeline + the scene classifier into ``out_dir`` (the shipped default's maker)."""
    from .weights import make_default_weights

    return make_default_weights(Path(out_dir), config, classifier_steps=classifier_steps, device=device, command=command)


def evaluate(pipe, classifier, n_eval: int, steps: int, seed: int = 0) -> dict:
    """Concept score on ``concept_test`` prompts, prompt fidelity on ``test`` prompts (held-out splits)."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    _, concept_prompts, _ = make_split("concept_test", n_eval, size)
    _, base_prompts, base_scenes = make_split("test", n_eval, size)
    return {"concept_score": concept_score(classifier, generate(pipe, concept_prompts, steps=steps, seed=seed)),
            "prompt_fidelity": prompt_fidelity(classifier, generate(pipe, base_prompts, steps=steps, seed=seed), base_scenes)}


def _val_eval(pipe, config: FinetuneConfig):
    """``eval_fn`` for ``fit``: noise-prediction loss on ``concept_val`` (the split hyperparameters are chosen on)."""
    from .recipes import Denoiser, concept_data, eval_denoising_loss

    latents, ids = concept_data(pipe, replace(config, n_images=min(config.n_images, 32), base_mix=0.0), split="concept_val")
    return lambda model: {"concept_val_loss": eval_denoising_loss(Denoiser(model.unet, model.text_encoder, model.scheduler), latents, ids)}


def train(config: FinetuneConfig, out_dir: Path, base_dir: Optional[Path] = None, device: str = "cpu",
          n_eval: int = 16, sample: SampleConfig = SampleConfig(), pipe=None) -> dict:
    """Fine-tune one adapter on the new texture; writes ``adapter/`` (core format), metrics, loss curve, sample grid."""
    from .recipes import finetune

    start = time.time()
    pipe = pipe if pipe is not None else _base(base_dir, device)
    report, result = finetune(pipe, config, eval_fn=_val_eval(pipe, config))
    pipe.to("cpu")
    out_dir = Path(out_dir)
    save(pipe.unet, out_dir / "adapter")
    scores = evaluate(pipe, _classifier(base_dir), n_eval, sample.steps, sample.seed) if n_eval else {}
    images = generate(pipe, GRID_PROMPTS, steps=sample.steps, guidance=sample.guidance, seed=sample.seed)
    grid = plot_grid({config.adapter: images}, GRID_PROMPTS, out_dir / "samples.png", title=f"{config.adapter} r={config.rank}")
    curve = plot_losses({config.adapter: result.history}, out_dir / "loss.png", title="fine-tuning loss (concept_train)")
    metrics = {"adapter": config.adapter, "rank": config.rank, "trainable_params": report.adapter_params, "layers": len(report.wrapped),
               "steps": result.steps, "final_loss": result.final_loss, "cuda_graph": result.cuda_graph, "history": result.history, **scores,
               "seconds": round(time.time() - start, 1), "config": asdict(config)}
    write_json(out_dir / "metrics.json", metrics)
    return {**{k: v for k, v in metrics.items() if k != "history"}, "adapter_dir": str(out_dir / "adapter"),
            "figures": [str(grid), str(curve)]}


def _adapter_format(adapter_dir: Path) -> str:
    """Which of our adapter layouts ``adapter_dir`` holds: ``"diffusers"``, ``"nera"`` or ``"core"`` (checked before any model loads)."""
    from .diffusers_io import LORA_WEIGHTS_NAME, NERA_CONFIG_NAME

    adapter_dir = Path(adapter_dir)
    for name, kind in ((LORA_WEIGHTS_NAME, "diffusers"), (NERA_CONFIG_NAME, "nera"), ("adapter_config.json", "core")):
        if (adapter_dir / name).is_file():
            return kind
    raise FileNotFoundError(f"--adapter: {adapter_dir} holds no adapter (expected adapter_config.json, {LORA_WEIGHTS_NAME} or {NERA_CONFIG_NAME})")


def _load_adapter(pipe, adapter_dir: Path) -> str:
    """Put any adapter folder of ours onto ``pipe``: core format, diffusers LoRA layout or NeRA pipeline folder."""
    from .diffusers_io import load_nera

    kind = _adapter_format(adapter_dir)
    if kind == "diffusers":
        pipe.load_lora_weights(str(adapter_dir))
    elif kind == "nera":
        load_nera(pipe, Path(adapter_dir))
    else:
        load(pipe.unet, Path(adapter_dir))
    return kind


def sample(prompts: Sequence[str], out_path: Path, adapter_dir: Optional[Path] = None, base_dir: Optional[Path] = None,
           config: SampleConfig = SampleConfig(), device: str = "cpu") -> dict:
    """Samples of ``prompts`` (base pipeline, with ``adapter_dir`` if given) as one PNG row."""
    if not prompts or not all(p.strip() for p in prompts):
        raise ValueError("prompt: expected at least one non-empty prompt")
    if adapter_dir is not None:
        _adapter_format(adapter_dir)  # a wrong --adapter fails before the pipeline loads
    pipe = _base(base_dir, device)
    rows = {}
    if adapter_dir is not None:
        rows["base"] = generate(pipe, list(prompts), steps=config.steps, guidance=config.guidance, seed=config.seed)
        kind = _load_adapter(pipe, Path(adapter_dir))
        rows[f"adapter ({kind})"] = generate(pipe, list(prompts), steps=config.steps, guidance=config.guidance, seed=config.seed)
    else:
        rows["base"] = generate(pipe, list(prompts), steps=config.steps, guidance=config.guidance, seed=config.seed)
    path = plot_grid(rows, list(prompts), Path(out_path))
    return {"png": str(path), "rows": list(rows), "prompts": list(prompts)}


def export(adapter_dir: Path, out_dir: Path, fmt: str = "diffusers", base_dir: Optional[Path] = None) -> dict:
    """Core-format adapter -> diffusers LoRA layout (lora/dora) or NeRA pipeline folder (nera)."""
    from .diffusers_io import export_diffusers, save_nera

    if fmt not in ("diffusers", "nera"):
        raise ValueError(f"--format must be 'diffusers' or 'nera', got {fmt!r}")
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"adapter: {adapter_dir} is not a core adapter folder (no adapter_config.json; made by lowrank-diffusion train)")
    pipe = _base(base_dir, "cpu")
    config = load(pipe.unet, adapter_dir)
    if fmt == "diffusers":
        export_diffusers(pipe, out_dir)
    else:
        save_nera(pipe, out_dir)
    return {"method": config["method"], "format": fmt, "out": str(out_dir), "files": sorted(p.name for p in Path(out_dir).iterdir())}


def equal_budget_rank(pipe, adapter: str, budget: int, config: FinetuneConfig) -> int:
    """Largest rank of ``adapter`` whose trainable parameters on ``config.targets`` do not exceed ``budget``."""
    from lowrank_vision.core import apply

    from .recipes import adapter_options

    cfg = replace(config, adapter=adapter)
    best = 0
    for rank in range(1, max(2, config.rank * 4)):
        unet = copy.deepcopy(pipe.unet)
        n = apply(unet, adapter, rank=rank, targets=list(cfg.targets), **adapter_options(cfg)).adapter_params
        if n > budget:
            break
        best = rank
    if best == 0:
        raise ValueError(f"{adapter} at rank 1 already has more than {budget} trainable parameters (LoRA r={config.rank}); "
                         "raise --rank or use a smaller NeRA grid (grid_size, spline_order)")
    return best


def compare(config: FinetuneConfig, out_dir: Path, adapters: Sequence[str] = ("lora", "dora", "nera"), base_dir: Optional[Path] = None,
            device: str = "cpu", n_eval: int = 16, sample_cfg: SampleConfig = SampleConfig()) -> dict:
    """Fine-tune each adapter at (at most) LoRA's trainable-parameter count; loss curves, scores, one grid."""
    from lowrank_vision.core import apply

    from .recipes import finetune

    base = _base(base_dir, device)
    classifier = _classifier(base_dir)
    budget = apply(copy.deepcopy(base.unet), "lora", rank=config.rank, targets=list(config.targets)).adapter_params
    out_dir = Path(out_dir)
    rows = {"base": generate(base.to("cpu"), GRID_PROMPTS, steps=sample_cfg.steps, guidance=sample_cfg.guidance, seed=sample_cfg.seed)}
    results, curves = {}, {}
    for adapter in adapters:
        pipe = copy.deepcopy(base).to(device)
        rank = config.rank if adapter == "lora" else equal_budget_rank(pipe, adapter, budget, config)
        cfg = replace(config, adapter=adapter, rank=rank, alpha=float(2 * rank) if config.alpha is None else config.alpha)
        start = time.time()
        report, result = finetune(pipe, cfg, eval_fn=_val_eval(pipe, cfg))
        pipe.to("cpu")
        save(pipe.unet, out_dir / adapter / "adapter")
        scores = evaluate(pipe, classifier, n_eval, sample_cfg.steps, sample_cfg.seed) if n_eval else {}
        rows[f"{adapter} r={rank}"] = generate(pipe, GRID_PROMPTS, steps=sample_cfg.steps, guidance=sample_cfg.guidance, seed=sample_cfg.seed)
        curves[adapter] = result.history
        results[adapter] = {"rank": rank, "trainable_params": report.adapter_params, "final_loss": result.final_loss,
                            "concept_val_loss": result.history[-1].get("eval_concept_val_loss"), "cuda_graph": result.cuda_graph, **scores,
                            "seconds": round(time.time() - start, 1)}
        del pipe
    base_scores = evaluate(base, classifier, n_eval, sample_cfg.steps, sample_cfg.seed) if n_eval else {}
    figures = [plot_losses(curves, out_dir / "loss_curves.png", title=f"fine-tuning loss, budget {budget} params (LoRA r={config.rank})"),
               plot_grid(rows, GRID_PROMPTS, out_dir / "samples.png", title="same prompts and seeds per row")]
    summary = {"budget_params": budget, "base": base_scores, "adapters": results, "curves": curves, "config": asdict(config),
               "figures": [str(f) for f in figures]}
    write_json(out_dir / "compare.json", summary)
    return {k: v for k, v in summary.items() if k != "curves"}


def demo(out_dir: Path, device: str = "cpu") -> dict:
    """Short CPU run for ``lowrank demo``: LoRA vs NeRA on the shipped base, a few steps each (the default trainer settings
    otherwise, so a GPU demo captures its steps too)."""
    trainer = replace(FinetuneConfig().train, max_steps=6, lr=5e-3, warmup_steps=0, log_every=2)
    cfg = FinetuneConfig(rank=8, n_images=16, batch_size=8, train=trainer)
    result = compare(cfg, Path(out_dir), adapters=("lora", "nera"), device=device, n_eval=0, sample_cfg=SampleConfig(steps=8))
    adapters = result["adapters"]
    lines = ", ".join(f"{name} r={r['rank']} ({r['trainable_params']} params): loss {r['final_loss']:.3f}, "
                      f"concept-val loss {r['concept_val_loss']:.3f}" for name, r in adapters.items())
    figures = result["figures"]
    return {
        "budget_params": result["budget_params"],
        **{f"{name}_{k}": v for name, r in adapters.items() for k, v in r.items() if isinstance(v, (int, float))},
        "figures": [{"path": figures[1], "caption": "samples (same prompts/seeds): base, LoRA, NeRA after 6 steps on the new 'checkered' texture"},
                    {"path": figures[0], "caption": "fine-tuning loss per step at equal trainable parameters"}],
        "summary": (f"Fine-tuned the UNet attention (to_q/k/v/out.0) of the shipped 16 px procedural-scenes pipeline on the unseen "
                    f"'checkered' texture for 6 steps: {lines}. Numbers this short say the path works, not which adapter is better."),
    }
