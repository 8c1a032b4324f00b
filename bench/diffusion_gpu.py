"""GPU acceptance of diffusion_nera in ONE wall-clock-budgeted run: NeRA vs LoRA vs DoRA at equal trainable parameters.

    python3 bench/diffusion_gpu.py --device cuda --out runs/diffusion_gpu --budget-s 480
    python3 bench/diffusion_gpu.py --device cpu --out /tmp/diffusion_smoke --budget-s 150 --smoke   # CPU rehearsal

Stages, in order; each writes its JSON at once and is skipped when that JSON exists (a re-run resumes):

1. ``base``: build a 32 px Stable-Diffusion-shaped pipeline from configs and pre-train it in bf16 on
   procedural scenes of split ``train`` (base textures plain/striped/dotted): VAE, then UNet + text
   encoder; each part trains for a share of the time left (``max_steps`` sized from a measured step
   time, cosine schedule; a deadline stops it if the shared GPU slows down, and the report says so).
2. ``classifier``: the scene classifier (colour/shape/texture) on ``classifier_train`` renders; its
   accuracy on ``classifier_test``; the base pipeline's concept score and prompt fidelity.
3. ``lr``: per adapter, the learning rate from a tiny grid by the noise-prediction loss on
   ``concept_val`` after a short run (the same short length for every adapter and lr).
4. ``train``: per adapter, the same number of steps from the base at the chosen lr on
   ``concept_train`` (the unseen 'checkered' texture); concept score on ``concept_test`` prompts at
   regular steps; prompt fidelity on base ``test`` prompts at the end; a sample grid.
5. ``report``: ``docs/results/diffusion.md`` + ``docs/results/diffusion/{raw.json,*.png}`` from the
   JSON of the stages that ran (``--smoke``: under ``OUT/report/`` instead).

Equal trainable parameters: LoRA at rank ``LORA_RANK`` sets the budget; DoRA and NeRA get the largest
rank within it (NeRA's KAN layers cost ``grid_size + spline_order + 1`` parameters per edge).

Whole-step CUDA graphs: every trainer run (VAE, UNet + text encoder, step-time probes, lr grid, fine-tuning) asks for them,
as the recipe's configs do (``PretrainConfig().train``, ``FinetuneConfig().train``): on a GPU each step is captured once and
replayed (``--eager`` turns that off; on a CPU the trainer runs eagerly and says why). Each run's ``cuda_graph`` record is
kept in its stage JSON (``base.json``: ``vae_cuda_graph``, ``cuda_graph``; ``lr.json``; ``runs/*/result.json``) and the
report says in one line whether the numbers came from captured steps; a run cut by its deadline keeps its record too
(its deadline is a ``core.train.StopTraining``; stages written before that change have none).
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # the budget counts from here, before the heavy imports

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = ("lora", "dora", "nera")
NERA_OPTIONS = dict(grid_size=4, spline_order=1)
"""The authors' hat basis (order 1) on 4 intervals: 6 parameters per KAN edge."""
REPORT_RESERVE_S = 30.0
SAFETY_S = 15.0


def sizes(smoke: bool) -> dict:
    from lowrank_vision.plugins.diffusion_nera.config import PipelineConfig

    if smoke:
        return dict(pipeline=PipelineConfig(image_size=16, vae_channels=(8, 16), unet_channels=(16, 32), text_dim=16, text_layers=1),
                    n_base=96, n_val=32, batch=16, cls_n=200, cls_steps=20, n_eval=8, sample_steps=4, ft_images=16, ft_batch=8,
                    lrs=(3e-3, 1e-2), lora_rank=8, eval_points=3, lr_steps_max=6, ft_steps_max=12, base_share=0.4, lr_share=0.25)
    return dict(pipeline=PipelineConfig(image_size=32, vae_channels=(32, 64), unet_channels=(64, 128), text_dim=64, text_layers=2, head_dim=16,
                                        norm_groups=16, max_tokens=12),
                n_base=20000, n_val=256, batch=128, cls_n=4000, cls_steps=1500, n_eval=64, sample_steps=20, ft_images=256, ft_batch=32,
                lrs=(1e-3, 3e-3, 1e-2), lora_rank=16, eval_points=8, lr_steps_max=150, ft_steps_max=1500, base_share=0.42, lr_share=0.2)


class Clock:
    """Wall-clock budget: ``left()`` seconds until the end minus the report reserve; a timeline of stages."""

    def __init__(self, budget_s: float, out: Path):
        self.end = T0 + budget_s - SAFETY_S
        self.out = out
        self.timeline = json.loads((out / "timeline.json").read_text()) if (out / "timeline.json").is_file() else []

    def left(self) -> float:
        return self.end - REPORT_RESERVE_S - time.monotonic()

    def mark(self, stage: str, start: float, **extra) -> None:
        from lowrank_vision.core.files import write_json

        self.timeline.append({"stage": stage, "seconds": round(time.monotonic() - start, 1), "at_s": round(time.monotonic() - T0, 1), **extra})
        write_json(self.out / "timeline.json", self.timeline)
        print(f"[{time.monotonic() - T0:6.1f} s] {stage}: {self.timeline[-1]['seconds']} s {extra or ''}", flush=True)


def _json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _graph_requested_by_recipe() -> bool:
    """Whether the recipe's own configs ask for whole-step CUDA graphs (the bench follows them unless ``--eager``)."""
    from lowrank_vision.plugins.diffusion_nera.config import FinetuneConfig, PretrainConfig

    return PretrainConfig().train.cuda_graph and FinetuneConfig().train.cuda_graph


def stage_base(out: Path, s: dict, device: str, clock: Clock, precision: str, graph: bool = True) -> None:
    from lowrank_vision.core.files import write_json
    from lowrank_vision.core.train import TrainConfig
    from lowrank_vision.datasets.diffusion.procedural import make_split
    from lowrank_vision.plugins.diffusion_nera.config import PretrainConfig
    from lowrank_vision.plugins.diffusion_nera.model import build_pipeline
    from lowrank_vision.plugins.diffusion_nera.recipes import Denoiser, encode_latents, eval_denoising_loss, pretrain_base, tokenize

    if (out / "base.json").is_file() and (out / "base" / "model_index.json").is_file():
        print("base: done, skipped")
        return
    start = time.monotonic()
    size = s["pipeline"].image_size
    images, captions, _ = make_split("train", s["n_base"], size)
    seconds = max(4.0, s["base_share"] * clock.left())
    config = PretrainConfig(pipeline=s["pipeline"], n_images=s["n_base"], vae_steps=100000, batch_size=s["batch"],
                            train=TrainConfig(max_steps=100000, lr=1e-3, warmup_steps=100, log_every=50, progress=False,
                                              mixed_precision=precision, cuda_graph=graph))
    retried = None
    for attempt_lr in (1e-3, 3e-4):  # a loss that turns non-finite in bf16 gets one retry at a lower lr, in the time left
        pipe = build_pipeline(s["pipeline"], seed=0).to(device)
        pipe.set_progress_bar_config(disable=True)
        config = replace(config, train=replace(config.train, lr=attempt_lr))
        left = seconds - (time.monotonic() - start)
        try:
            history = pretrain_base(pipe, config, vae_seconds=0.2 * left, unet_seconds=0.8 * left - 2.0, data=(images, captions))
            break
        except FloatingPointError as exc:
            retried = f"lr {attempt_lr:g}: {exc}"
            print("base:", retried, "-> retry at a lower lr", flush=True)
            if attempt_lr == 3e-4:
                raise
    val_images, val_captions, _ = make_split("val", s["n_val"], size)
    val_loss = eval_denoising_loss(Denoiser(pipe.unet, pipe.text_encoder, pipe.scheduler), encode_latents(pipe.vae, val_images),
                                   tokenize(pipe, val_captions).to(device))
    pipe.to("cpu").save_pretrained(str(out / "base"), safe_serialization=True)
    copy.deepcopy(pipe).to(torch.float16).save_pretrained(str(out / "base_fp16"), safe_serialization=True)  # small enough to come back
    n_params = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "vae", "text_encoder")}
    write_json(out / "base.json", {"config": asdict(config), "n_images": s["n_base"], "params": n_params, "val_denoising_loss": val_loss,
                                   "budget_s": round(seconds, 1), "retried_after": retried, **history})
    clock.mark("base", start, vae_steps=history.get("vae_steps"), unet_steps=history["steps"], cut_short=history["cut_short"],
               val_loss=round(val_loss, 4))


def _scores(pipe, classifier, s: dict, seed: int = 0) -> dict:
    from lowrank_vision.datasets.diffusion.procedural import make_split
    from lowrank_vision.plugins.diffusion_nera.metrics import concept_score, generate, prompt_fidelity

    size = s["pipeline"].image_size
    _, concept_prompts, _ = make_split("concept_test", s["n_eval"], size)
    _, base_prompts, base_scenes = make_split("test", s["n_eval"], size)
    return {"concept_score": concept_score(classifier, generate(pipe, concept_prompts, steps=s["sample_steps"], seed=seed)),
            "prompt_fidelity": prompt_fidelity(classifier, generate(pipe, base_prompts, steps=s["sample_steps"], seed=seed), base_scenes)}


def stage_classifier(out: Path, s: dict, device: str, clock: Clock) -> None:
    from safetensors.torch import save_file

    from lowrank_vision.core.files import write_json
    from lowrank_vision.plugins.diffusion_nera.commands import GRID_PROMPTS
    from lowrank_vision.plugins.diffusion_nera.metrics import classifier_accuracy, generate, train_classifier
    from lowrank_vision.plugins.diffusion_nera.weights import CLASSIFIER_NAME, load_base

    if (out / "classifier.json").is_file():
        print("classifier: done, skipped")
        return
    start = time.monotonic()
    size = s["pipeline"].image_size
    classifier = train_classifier(size, n=s["cls_n"], steps=s["cls_steps"], seed=0, device=device, batch_size=128)
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(out / "base" / CLASSIFIER_NAME))
    accuracy = classifier_accuracy(classifier, size)
    pipe = load_base(out / "base", device)
    t = time.monotonic()
    scores = _scores(pipe, classifier, s)
    eval_seconds = (time.monotonic() - t) / 2
    np.save(out / "grid_base.npy", generate(pipe, GRID_PROMPTS, steps=s["sample_steps"], seed=0))
    write_json(out / "classifier.json", {"steps": s["cls_steps"], "n_train": s["cls_n"], "test_accuracy": accuracy, "base_samples": scores,
                                         "seconds_per_score": round(eval_seconds, 2)})
    clock.mark("classifier", start, accuracy=accuracy, base=scores)


def _config(adapter: str, rank: int, lr: float, steps: int, s: dict, precision: str, eval_every: int = 0, graph: bool = True):
    from lowrank_vision.core.train import TrainConfig
    from lowrank_vision.plugins.diffusion_nera.config import FinetuneConfig

    return FinetuneConfig(adapter=adapter, rank=rank, alpha=float(2 * rank), n_images=s["ft_images"], batch_size=s["ft_batch"], **NERA_OPTIONS,
                          train=TrainConfig(max_steps=steps, lr=lr, warmup_steps=min(20, steps // 10), log_every=max(1, steps // 50),
                                            eval_every=eval_every, progress=False, mixed_precision=precision, cuda_graph=graph))


def stage_lr(out: Path, s: dict, device: str, clock: Clock, precision: str, graph: bool = True) -> None:
    """Ranks at equal parameters, step time per adapter (a short probe), then the lr grid on concept_val."""
    from lowrank_vision.core import apply
    from lowrank_vision.core.files import write_json
    from lowrank_vision.plugins.diffusion_nera.commands import equal_budget_rank
    from lowrank_vision.plugins.diffusion_nera.recipes import Denoiser, concept_data, eval_denoising_loss, finetune
    from lowrank_vision.plugins.diffusion_nera.weights import load_base

    path = out / "lr.json"
    state = _json(path) or {}
    if state.get("done"):
        print("lr: done, skipped")
        return
    start = time.monotonic()
    seconds = max(3.0, s["lr_share"] * clock.left())
    deadline = time.monotonic() + seconds
    base = load_base(out / "base", device)
    if "ranks" not in state:
        cfg = _config("lora", s["lora_rank"], 1e-3, 1, s, precision)
        budget = apply(copy.deepcopy(base.unet), "lora", rank=s["lora_rank"], targets=list(cfg.targets)).adapter_params
        state["ranks"] = {a: s["lora_rank"] if a == "lora" else equal_budget_rank(base, a, budget, cfg) for a in ADAPTERS}
        state["budget_params"] = budget
        data = concept_data(base, cfg)
        state["seconds_per_step"], state["probe_cuda_graph"] = {}, {}
        for adapter in ADAPTERS:  # step time of each adapter: 10 steps on a copy of the base
            pipe = copy.deepcopy(base)
            _, probe = finetune(pipe, _config(adapter, state["ranks"][adapter], 1e-3, 10, s, precision, graph=graph), data=data,
                                deadline=time.monotonic() + seconds / 6)
            state["seconds_per_step"][adapter] = probe.seconds_per_step if probe.steps > 2 else probe.seconds / max(1, probe.steps)
            state["probe_cuda_graph"][adapter] = probe.cuda_graph
        state["results"] = {}
        write_json(path, state)
    cfg = _config("lora", s["lora_rank"], 1e-3, 1, s, precision)
    data = concept_data(base, cfg)
    val = concept_data(base, replace(cfg, n_images=min(64, s["ft_images"])), split="concept_val")
    slowest = max(state["seconds_per_step"].values())
    runs = len(ADAPTERS) * len(s["lrs"])
    if "lr_steps" not in state:
        state["lr_steps"] = int(min(s["lr_steps_max"], max(3, (deadline - time.monotonic()) / runs / slowest * 0.7)))
    for lr in s["lrs"]:  # every adapter at one lr before the next lr, so a cut stage has a comparable grid
        for adapter in ADAPTERS:
            key = f"{adapter}@{lr:g}"
            if key in state["results"]:
                continue
            pipe = copy.deepcopy(base)
            try:
                _, result = finetune(pipe, _config(adapter, state["ranks"][adapter], lr, state["lr_steps"], s, precision, graph=graph),
                                     data=data, deadline=deadline + 10)
                state["results"][key] = {"adapter": adapter, "lr": lr, "steps": result.steps, "cut_short": result.cut_short,
                                         "cuda_graph": result.cuda_graph,
                                         "concept_val_loss": eval_denoising_loss(Denoiser(pipe.unet, pipe.text_encoder, pipe.scheduler),
                                                                                 val[0], val[1].to(device), repeats=2)}
            except FloatingPointError as exc:  # diverged: this lr loses
                state["results"][key] = {"adapter": adapter, "lr": lr, "steps": None, "cut_short": False, "concept_val_loss": float("inf"),
                                         "diverged": str(exc)}
            write_json(path, state)
            if time.monotonic() > deadline:
                break
        if time.monotonic() > deadline:
            break
    chosen = {}
    for adapter in ADAPTERS:
        tried = [r for r in state["results"].values() if r["adapter"] == adapter and not r["cut_short"]]
        chosen[adapter] = min(tried, key=lambda r: r["concept_val_loss"])["lr"] if tried else s["lrs"][0]
    state.update(chosen=chosen, done=True, cut_short=len(state["results"]) < runs, chosen_on="concept_val noise-prediction loss")
    write_json(path, state)
    clock.mark("lr", start, chosen=chosen, lr_steps=state["lr_steps"], runs=len(state["results"]))


def stage_train(out: Path, s: dict, device: str, clock: Clock, precision: str, graph: bool = True) -> None:
    from lowrank_vision.core import save
    from lowrank_vision.core.files import write_json
    from lowrank_vision.datasets.diffusion.procedural import make_split
    from lowrank_vision.plugins.diffusion_nera.commands import GRID_PROMPTS
    from lowrank_vision.plugins.diffusion_nera.metrics import concept_score, generate
    from lowrank_vision.plugins.diffusion_nera.recipes import Denoiser, concept_data, eval_denoising_loss, finetune
    from lowrank_vision.plugins.diffusion_nera.weights import load_base, load_classifier

    lr = _json(out / "lr.json")
    cls = _json(out / "classifier.json")
    if not (lr and lr.get("done") and cls):
        raise RuntimeError("train needs the lr and classifier stages (lr.json with done=true, classifier.json)")
    plan = _json(out / "train_plan.json")
    if plan is None:  # the same step count for every adapter, sized by the slowest one
        slowest = max(lr["seconds_per_step"].values())
        per_adapter = clock.left() / len(ADAPTERS)
        evals = s["eval_points"] + 3  # evaluations + final scores + grid
        steps = int(min(s["ft_steps_max"], max(4, (per_adapter - evals * cls["seconds_per_score"] - 4) / slowest * 0.8)))
        plan = {"steps": steps, "eval_every": max(1, steps // s["eval_points"]), "slowest_seconds_per_step": slowest}
        write_json(out / "train_plan.json", plan)
    classifier = load_classifier(out / "base")
    _, concept_prompts, _ = make_split("concept_test", s["n_eval"], s["pipeline"].image_size)
    for i, adapter in enumerate(ADAPTERS):
        target = out / "runs" / adapter
        if (target / "result.json").is_file():
            print(f"train {adapter}: done, skipped")
            continue
        start = time.monotonic()
        after = 3 * cls["seconds_per_score"] * (2 if adapter == "nera" else 1) + 3  # final scores, grid, save (NeRA samples slower)
        deadline = time.monotonic() + max(1.0, clock.left() / (len(ADAPTERS) - i) - after)
        pipe = load_base(out / "base", device)
        cfg = _config(adapter, lr["ranks"][adapter], lr["chosen"][adapter], plan["steps"], s, precision, eval_every=plan["eval_every"],
                      graph=graph)
        data = concept_data(pipe, cfg)
        val = concept_data(pipe, replace(cfg, n_images=min(64, s["ft_images"])), split="concept_val")

        def eval_fn(model, pipe=pipe):
            return {"concept_score": concept_score(classifier, generate(pipe, concept_prompts, steps=s["sample_steps"], seed=0))}

        try:
            report, result = finetune(pipe, cfg, eval_fn=eval_fn, data=data, deadline=deadline)
        except FloatingPointError as exc:  # recorded; the other adapters still run
            clock.mark(f"train {adapter} DIVERGED", start, error=str(exc))
            continue
        scores = _scores(pipe, classifier, s)
        scores["concept_val_loss"] = eval_denoising_loss(Denoiser(pipe.unet, pipe.text_encoder, pipe.scheduler), val[0], val[1], repeats=2)
        np.save(out / f"grid_{adapter}.npy", generate(pipe, GRID_PROMPTS, steps=s["sample_steps"], seed=0))
        save(pipe.unet.to("cpu"), target / "adapter")
        curve = [{"step": 0, "concept_score": cls["base_samples"]["concept_score"]}]
        curve += [{"step": h["step"], "concept_score": h["eval_concept_score"]} for h in result.history if "eval_concept_score" in h]
        write_json(target / "result.json", {"adapter": adapter, "rank": cfg.rank, "lr": cfg.train.lr, "trainable_params": report.adapter_params,
                                            "layers": len(report.wrapped), "steps": result.steps, "planned_steps": plan["steps"],
                                            "cut_short": result.cut_short, "seconds": round(result.seconds, 1), "cuda_graph": result.cuda_graph,
                                            "seconds_per_step": result.seconds_per_step, "history": result.history,
                                            "concept_curve": curve, "final": scores})
        clock.mark(f"train {adapter}", start, steps=result.steps, cut_short=result.cut_short, final=scores)


def graph_records(base: dict | None, lr: dict | None, runs: dict) -> dict:
    """``{run: cuda_graph record or None}`` of every trainer run in the stages' JSON (``None``: a stage written before the
    bench kept records, or before a run cut by its deadline kept one)."""
    records = {}
    if base:
        records |= {"base VAE": base.get("vae_cuda_graph"), "base UNet": base.get("cuda_graph")}
    if lr:
        records |= {f"probe {a}": r for a, r in lr.get("probe_cuda_graph", {}).items()}
        records |= {f"lr {k}": r.get("cuda_graph") for k, r in lr.get("results", {}).items() if not r.get("diverged")}
    records |= {f"train {a}": r.get("cuda_graph") for a, r in runs.items()}
    return records


def graph_line(records: dict) -> str:
    """One report line: in how many runs the whole training step was a captured CUDA graph, and why not elsewhere."""
    from lowrank_vision.core.train import describe_graph_records

    return describe_graph_records(records, 'run before the bench kept its record')


def first_step_reaching(curve: list[dict], target: float):
    return next((c["step"] for c in curve if c["concept_score"] >= target), None)


def stage_report(out: Path, s: dict, device: str, docs: Path, budget_s: float, smoke: bool, eager: bool = False) -> None:
    from lowrank_vision.core.files import write_json, write_text
    from lowrank_vision.plugins.diffusion_nera.commands import GRID_PROMPTS
    from lowrank_vision.plugins.diffusion_nera.metrics import plot_grid, plot_losses

    start = time.monotonic()
    figs = docs.parent / "diffusion"
    base, cls, lr, plan = _json(out / "base.json"), _json(out / "classifier.json"), _json(out / "lr.json"), _json(out / "train_plan.json")
    runs = {a: r for a in ADAPTERS if (r := _json(out / "runs" / a / "result.json")) is not None}
    missing = [a for a in ADAPTERS if a not in runs]
    figures = []
    if runs:
        rows = {"base": np.load(out / "grid_base.npy")} if (out / "grid_base.npy").is_file() else {}
        rows.update({f"{a} r={r['rank']}": np.load(out / f"grid_{a}.npy") for a, r in runs.items()})
        figures.append(plot_grid(rows, GRID_PROMPTS, figs / "samples.png", title="same prompts and seeds per row (3 new-texture prompts, 2 base prompts)"))
        for a, r in runs.items():
            figures.append(plot_grid({f"{a} r={r['rank']}": rows[f"{a} r={r['rank']}"]}, GRID_PROMPTS, figs / f"samples_{a}.png"))
        figures.append(plot_losses({a: r["concept_curve"] for a, r in runs.items()}, figs / "concept_score.png", key="concept_score",
                                   title="concept score on concept_test prompts vs fine-tuning step"))
        figures.append(plot_losses({a: r["history"] for a, r in runs.items()}, figs / "loss_curves.png", title="noise-prediction loss (concept_train batches)"))
    lora_final = runs["lora"]["concept_curve"][-1]["concept_score"] if "lora" in runs else None
    reach = {a: first_step_reaching(r["concept_curve"], lora_final) for a, r in runs.items()} if lora_final is not None else {}
    timeline = _json(out / "timeline.json") or []
    graphs = graph_records(base, lr, runs)
    raw = {"base": base, "classifier": cls, "lr": lr, "train_plan": plan, "runs": runs, "first_step_reaching_lora_final": reach,
           "cuda_graph": graphs,
           "timeline": timeline, "budget_s": budget_s, "device": device,
           "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else platform.processor() or "cpu",
           "versions": _versions()}
    write_json(figs / "raw.json", raw)
    cmd = f"python3 bench/diffusion_gpu.py --device {device} --out {out} --budget-s {budget_s:g}" + (" --smoke" if smoke else "") + (" --eager" if eager else "")
    lines = ["# diffusion_nera: NeRA (KAN) vs LoRA vs DoRA on an unseen texture", "",
             f"Written by `{cmd}` (one run, {budget_s:g} s wall-clock budget for everything, on {raw['device_name']}"
             + (", **the GPU and its CPU cores shared with another benchmark running at the same time**" if device.startswith("cuda") else "")
             + "). Raw numbers: [`diffusion/raw.json`](diffusion/raw.json). Step times, and so how far each time-budgeted stage got, "
             "depend on that sharing; the comparison of adapters is at equal steps.", "", graph_line(graphs), ""]
    if smoke:
        lines += ["**Smoke run (CPU, tiny sizes): the numbers prove the script runs and mean nothing.**", ""]
    if base:
        p = base["config"]["pipeline"]
        lines += ["## Base model (pre-trained in this run)", "",
                  f"`StableDiffusionPipeline` built from configs: {p['image_size']} px images, VAE {p['vae_channels']}, UNet {p['unet_channels']}, "
                  f"CLIP text encoder width {p['text_dim']} x {p['text_layers']} layers, a word-level tokenizer; parameters {base['params']}. "
                  f"Trained on {base['n_images']} scenes of split `train` (textures plain/striped/dotted; 'checkered' never seen), batch "
                  f"{base['config']['batch_size']}, {base['config']['train']['mixed_precision']} autocast: VAE {base.get('vae_steps')} steps "
                  f"({base.get('vae_seconds')} s{', cut short by its deadline' if base.get('vae_cut_short') else ''}), then UNet + text encoder "
                  f"{base['steps']} of {base['planned_steps']} planned steps ({base['seconds']} s{', **cut short by its deadline**' if base['cut_short'] else ''}).",
                  "", f"- held-out `val` noise-prediction loss: {base['val_denoising_loss']:.4f} (train loss at the end {base['final_loss']:.4f})"]
    if cls:
        lines += [f"- scene classifier ({cls['steps']} steps on {cls['n_train']} renders of `classifier_train`), accuracy on `classifier_test`: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in cls["test_accuracy"].items()),
                  f"- base pipeline's samples ({s['n_eval']} prompts each, {s['sample_steps']} DDIM steps, guidance 3): concept score "
                  f"(share the classifier calls 'checkered') on `concept_test` prompts **{cls['base_samples']['concept_score']:.3f}**; prompt fidelity "
                  f"(colour and shape right) on base `test` prompts **{cls['base_samples']['prompt_fidelity']:.3f}**", ""]
    if lr:
        lines += ["## Learning rates (chosen on `concept_val`)", "",
                  f"Budget: LoRA r={s['lora_rank']} on to_q/to_k/to_v/to_out.0 of every UNet attention = {lr['budget_params']} trainable parameters; "
                  f"ranks at (at most) that budget: {lr['ranks']} (NeRA: KAN layers, grid {NERA_OPTIONS['grid_size']}, spline order "
                  f"{NERA_OPTIONS['spline_order']}). Each (adapter, lr) trained {lr['lr_steps']} steps from the base; criterion: noise-prediction "
                  f"loss on `concept_val` (fixed noise and timesteps)." + (" **The lr stage was cut short by its time budget.**" if lr.get("cut_short") else ""),
                  "", "| adapter | " + " | ".join(f"lr {x:g}" for x in s["lrs"]) + " | chosen |", "|---" * (len(s["lrs"]) + 2) + "|"]
        for a in ADAPTERS:
            cells = [lr["results"].get(f"{a}@{x:g}") for x in s["lrs"]]
            lines.append(f"| {a} | " + " | ".join(("diverged" if c.get("diverged") else f"{c['concept_val_loss']:.4f}") if c else "not run" for c in cells) + f" | {lr['chosen'][a]:g} |")
        lines.append("")
    if runs:
        lines += ["## Fine-tuning on the new texture (equal trainable parameters, equal steps)", "",
                  f"Each adapter: {plan['steps']} planned steps, batch {s['ft_batch']}, {s['ft_images']} scenes of `concept_train`, cosine schedule; "
                  f"concept score on {s['n_eval']} `concept_test` prompts every {plan['eval_every']} steps (step 0 = the base); prompt fidelity on "
                  f"{s['n_eval']} base `test` prompts at the end (a drop is forgetting).", "",
                  "| adapter | rank | trainable params | lr | steps done | concept_val loss | final concept score | prompt fidelity | first step with concept score >= LoRA's final | s/step |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for a, r in runs.items():
            lines.append(f"| {a} | {r['rank']} | {r['trainable_params']} | {r['lr']:g} | {r['steps']}{' (cut short)' if r['cut_short'] else ''} | "
                         f"{r['final']['concept_val_loss']:.4f} | {r['concept_curve'][-1]['concept_score']:.3f} | {r['final']['prompt_fidelity']:.3f} | "
                         f"{reach.get(a)} | {r['seconds_per_step']:.4f} |")
        lines.append("")
        verdict = _verdict(runs, reach, lora_final)
        lines += ["## Verdict", "", verdict, ""]
    if missing:
        lines += [f"**Not run (time budget exhausted or stage failed): {', '.join(missing)}.**", ""]
    lines += ["## Figures", ""] + [f"![{Path(f).stem}](diffusion/{Path(f).name})" for f in figures] + [""]
    lines += ["## Stages", "", "| stage | seconds | reached at (s since start) |", "|---|---|---|"]
    lines += [f"| {t['stage']} | {t['seconds']} | {t['at_s']} |" for t in timeline] + [""]
    lines += ["Data: procedural scenes (`lowrank_vision.datasets.diffusion.procedural`), disjoint seeded splits: base pre-training on `train`, "
              "base val loss on `val`, classifier on `classifier_train`/`classifier_test`, fine-tuning on `concept_train`, learning rates on "
              "`concept_val`, concept score on `concept_test` prompts, prompt fidelity on `test` prompts.", ""]
    write_text(docs, "\n".join(lines))
    print(f"[{time.monotonic() - T0:6.1f} s] report: {docs} ({time.monotonic() - start:.1f} s)", flush=True)


def _verdict(runs: dict, reach: dict, lora_final) -> str:
    if "lora" not in runs or "nera" not in runs:
        return "No verdict: LoRA or NeRA did not run."
    lora_steps = runs["lora"]["concept_curve"][-1]["step"]
    n = reach.get("nera")
    head = f"LoRA's final concept score is {lora_final:.3f} (step {lora_steps}). "
    if lora_final <= runs["nera"]["concept_curve"][0]["concept_score"]:
        return head + "The base already scores that much, so 'reaching it' says nothing; no claim either way."
    if n is not None and n < lora_steps:
        return head + f"**NeRA reaches it at step {n}, in fewer steps than LoRA** (at equal trainable parameters; concept scores are measured every few steps, so the step is a multiple of that interval)."
    if n is not None:
        return head + f"NeRA reaches it only at step {n}: **not in fewer steps than LoRA** on this task."
    return head + f"**NeRA does not reach it** within its {runs['nera']['steps']} steps (final {runs['nera']['concept_curve'][-1]['concept_score']:.3f})."


def _versions() -> dict:
    import importlib.metadata as md

    return {name: md.version(name) for name in ("torch", "diffusers", "transformers", "tokenizers") if _has(md, name)}


def _has(md, name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="runs/diffusion_gpu")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock seconds for everything, from the start of the script")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CPU rehearsal); the report goes to OUT/report/")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--eager", action="store_true", help="no whole-step CUDA graphs (the recipe's configs ask for them on a GPU)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = True  # sampling runs in float32
    torch.backends.cudnn.allow_tf32 = True
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    except ImportError:
        pass
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    s = sizes(a.smoke)
    precision = "bf16" if a.device.startswith("cuda") else "no"
    graph = _graph_requested_by_recipe() and not a.eager
    clock = Clock(a.budget_s, out)
    docs = out / "report" / "diffusion.md" if a.smoke else ROOT / "docs" / "results" / "diffusion.md"
    print(f"[{time.monotonic() - T0:6.1f} s] start: device {a.device}, budget {a.budget_s:g} s, precision {precision}, "
          f"whole-step CUDA graphs {'requested' if graph else 'off'}", flush=True)
    stages = (("base", lambda: stage_base(out, s, a.device, clock, precision, graph)), ("classifier", lambda: stage_classifier(out, s, a.device, clock)),
              ("lr", lambda: stage_lr(out, s, a.device, clock, precision, graph)), ("train", lambda: stage_train(out, s, a.device, clock, precision, graph)))
    for name, run in stages:
        if clock.left() < 2:
            print(f"{name}: no time left, skipped (the report says so)")
            continue
        try:
            run()
        except Exception as exc:  # the report must still be written; the failure is recorded in the timeline
            import traceback

            traceback.print_exc()
            clock.mark(f"{name} FAILED", time.monotonic(), error=f"{type(exc).__name__}: {exc}"[:500])
            if name in ("base", "classifier"):
                break
    stage_report(out, s, a.device, docs, a.budget_s, a.smoke, a.eager)
    print(f"[{time.monotonic() - T0:6.1f} s] done", flush=True)


if __name__ == "__main__":
    main()
