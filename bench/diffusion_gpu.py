"""GPU acceptance of diffusion_nera: NeRA (KAN) vs LoRA vs DoRA at equal trainable parameters.

Resumable stages (each skips finished work, each sized for <= 10 min on one H200):

    python bench/diffusion_gpu.py --stage ship      # remake the shipped 16 px default with `lowrank-diffusion pretrain-base`
    python bench/diffusion_gpu.py --stage base      # pre-train a 32 px base pipeline + scene classifier
    python bench/diffusion_gpu.py --stage lr        # per adapter: learning rate chosen on concept_val loss
    python bench/diffusion_gpu.py --stage train     # per adapter: fine-tune, concept score every eval_every steps
    python bench/diffusion_gpu.py --stage report    # docs/results/diffusion.md + PNG + raw JSON
    python bench/diffusion_gpu.py --stage all       # all of the above in order

``--tiny --device cpu --out /tmp/x`` runs every stage in seconds-per-stage sizes (proof that it works).
Data: procedural scenes; base on split ``train`` (plain/striped/dotted); fine-tuning on
``concept_train`` (the unseen 'checkered' texture); learning rates chosen on ``concept_val``;
concept score on ``concept_test`` prompts, prompt fidelity on ``test`` prompts.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from lowrank_vision.core import apply, save
from lowrank_vision.core.files import write_json, write_text
from lowrank_vision.core.train import TrainConfig
from lowrank_vision.datasets.diffusion.procedural import make_split
from lowrank_vision.plugins.diffusion_nera.commands import GRID_PROMPTS, equal_budget_rank
from lowrank_vision.plugins.diffusion_nera.config import FinetuneConfig, PipelineConfig, PretrainConfig
from lowrank_vision.plugins.diffusion_nera.metrics import concept_score, generate, plot_grid, plot_losses, prompt_fidelity
from lowrank_vision.plugins.diffusion_nera.recipes import Denoiser, concept_data, eval_denoising_loss, finetune
from lowrank_vision.plugins.diffusion_nera.weights import load_base, load_classifier, make_default_weights

ADAPTERS = ("lora", "dora", "nera")
LRS = (5e-4, 1e-3, 2e-3, 5e-3)
ROOT = Path(__file__).resolve().parents[1]


def sizes(tiny: bool, device: str) -> dict:
    if tiny:
        return dict(tiny=True, pipeline=PipelineConfig(), n_base=64, base_steps=3, vae_steps=2, cls_steps=2, batch=8, ft_images=8,
                    ft_steps=4, lr_steps=2, eval_every=2, n_eval=4, sample_steps=4, lrs=(1e-3, 5e-3), precision="no")
    return dict(pipeline=PipelineConfig(image_size=32, vae_channels=(32, 64), unet_channels=(64, 128), text_dim=64, head_dim=16),
                n_base=20000, base_steps=6000, vae_steps=2000, cls_steps=2000, batch=128, ft_images=128, ft_steps=600,
                lr_steps=200, eval_every=50, n_eval=64, sample_steps=25, lrs=LRS, precision="bf16" if device.startswith("cuda") else "no")


SHIPPED = ROOT / "plugins" / "diffusion_nera" / "weights" / "base_procedural"


def stage_ship(out: Path, s: dict, device: str) -> None:
    """The shipped default, made by the app's own command on the GPU (card + README written by it)."""
    card = SHIPPED / "card.json"
    if card.is_file() and json.loads(card.read_text()).get("device", "cpu").startswith("cuda"):
        print("ship: done on a GPU already, skipped")
        return
    from lowrank_vision.apps.diffusion import main as app

    steps = (["--steps", "2", "--vae-steps", "1", "--classifier-steps", "1"] if s.get("tiny")
             else ["--steps", "4000", "--vae-steps", "1500", "--classifier-steps", "1500"])
    target = out / "shipped_base" if s.get("tiny") else SHIPPED
    assert app(["pretrain-base", *steps, "--device", device, "--out", str(target)]) == 0


def stage_base(out: Path, s: dict, device: str) -> None:
    if (out / "base" / "card.json").is_file():
        print("base: done, skipped")
        return
    config = PretrainConfig(pipeline=s["pipeline"], n_images=s["n_base"], vae_steps=s["vae_steps"], batch_size=s["batch"],
                            train=TrainConfig(max_steps=s["base_steps"], lr=1e-3, warmup_steps=min(200, s["base_steps"] // 4),
                                              log_every=max(1, s["base_steps"] // 50), progress=True, mixed_precision=s["precision"]))
    card = make_default_weights(out / "base", config, classifier_steps=s["cls_steps"], device=device, command="python bench/diffusion_gpu.py --stage base")
    print("base:", json.dumps({k: card[k] for k in ("val_denoising_loss", "classifier_test_accuracy", "base_samples", "seconds")}))


LORA_RANK = 16
NERA_GRID = dict(grid_size=4, spline_order=1)
"""NeRA at equal parameters: the authors' hat basis (order 1) on 4 intervals, so 6x LoRA's parameters per rank."""


def _config(adapter: str, rank: int, lr: float, steps: int, s: dict) -> FinetuneConfig:
    return FinetuneConfig(adapter=adapter, rank=rank, alpha=float(2 * rank), n_images=s["ft_images"], batch_size=min(32, s["ft_images"]),
                          **NERA_GRID,
                          train=TrainConfig(max_steps=steps, lr=lr, warmup_steps=min(20, steps // 4), log_every=max(1, s["eval_every"] // 5),
                                            eval_every=s["eval_every"], progress=False, mixed_precision=s["precision"]))


def ranks(out: Path, device: str) -> tuple[dict, int]:
    base = load_base(out / "base", device)
    targets = list(FinetuneConfig().targets)
    budget = apply(copy.deepcopy(base.unet), "lora", rank=LORA_RANK, targets=targets).adapter_params
    config = FinetuneConfig(rank=LORA_RANK, **NERA_GRID)
    return {a: LORA_RANK if a == "lora" else equal_budget_rank(base, a, budget, config) for a in ADAPTERS}, budget


def stage_lr(out: Path, s: dict, device: str) -> None:
    path = out / "lr_selection.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    rank_of, budget = ranks(out, device)
    for adapter in ADAPTERS:
        for lr in s["lrs"]:
            key = f"{adapter}@{lr:g}"
            if key in done:
                continue
            pipe = load_base(out / "base", device)
            cfg = replace(_config(adapter, rank_of[adapter], lr, s["lr_steps"], s), train=replace(_config(adapter, rank_of[adapter], lr, s["lr_steps"], s).train, eval_every=0))
            val = concept_data(pipe, replace(cfg, n_images=min(64, s["ft_images"])), split="concept_val")
            finetune(pipe, cfg)
            done[key] = eval_denoising_loss(Denoiser(pipe.unet, pipe.text_encoder, pipe.scheduler), *[t.to(device) for t in val])
            write_json(path, done)
            print("lr:", key, done[key])
    best = {a: min((v, float(k.split("@")[1])) for k, v in done.items() if k.startswith(a + "@"))[1] for a in ADAPTERS}
    write_json(out / "lr_chosen.json", {"chosen_on": "concept_val noise-prediction loss", "lr": best, "ranks": rank_of, "budget_params": budget})


def stage_train(out: Path, s: dict, device: str) -> None:
    chosen = json.loads((out / "lr_chosen.json").read_text())
    classifier = load_classifier(out / "base")
    size = s["pipeline"].image_size
    _, concept_prompts, _ = make_split("concept_test", s["n_eval"], size)
    _, base_prompts, base_scenes = make_split("test", s["n_eval"], size)
    for adapter in ADAPTERS:
        target = out / "runs" / adapter
        if (target / "result.json").is_file():
            print(f"train {adapter}: done, skipped")
            continue
        pipe = load_base(out / "base", device)
        cfg = _config(adapter, chosen["ranks"][adapter], chosen["lr"][adapter], s["ft_steps"], s)

        def eval_fn(model, pipe=pipe):
            imgs = generate(pipe, concept_prompts, steps=s["sample_steps"], seed=0)
            return {"concept_score": concept_score(classifier, imgs)}

        start = time.time()
        report, result = finetune(pipe, cfg, eval_fn=eval_fn)
        fidelity = prompt_fidelity(classifier, generate(pipe, base_prompts, steps=s["sample_steps"], seed=0), base_scenes)
        grid = generate(pipe, GRID_PROMPTS, steps=s["sample_steps"], seed=0)
        save(pipe.unet, target / "adapter")
        torch.save(torch.from_numpy(grid), target / "grid.pt")
        write_json(target / "result.json", {"adapter": adapter, "rank": cfg.rank, "lr": cfg.train.lr, "trainable_params": report.adapter_params,
                                            "history": result.history, "prompt_fidelity": fidelity, "seconds": round(time.time() - start, 1)})
        print(f"train {adapter}: {report.adapter_params} params, final concept score {result.history[-1].get('eval_concept_score')}")


def stage_report(out: Path, s: dict, device: str, docs: Path) -> None:
    base_card = json.loads((out / "base" / "card.json").read_text())
    runs = {a: json.loads((out / "runs" / a / "result.json").read_text()) for a in ADAPTERS}
    base = load_base(out / "base", "cpu")
    rows = {"base": generate(base, GRID_PROMPTS, steps=s["sample_steps"], seed=0)}
    rows.update({f"{a} r={r['rank']}": torch.load(out / "runs" / a / "grid.pt").numpy() for a, r in runs.items()})
    figs = docs.parent / "diffusion"
    plot_grid(rows, GRID_PROMPTS, figs / "samples.png", title="same prompts and seeds per row")
    plot_losses({a: r["history"] for a, r in runs.items()}, figs / "loss_curves.png", title="fine-tuning loss (concept_train)")
    plot_losses({a: r["history"] for a, r in runs.items()}, figs / "concept_score.png", key="eval_concept_score", title="concept score (concept_test prompts)")
    final_lora = [h["eval_concept_score"] for h in runs["lora"]["history"] if "eval_concept_score" in h][-1]
    first_reach = {a: next((h["step"] for h in r["history"] if h.get("eval_concept_score", -1) >= final_lora), None) for a, r in runs.items()}
    write_json(figs / "raw.json", {"base_card": base_card, "runs": runs, "first_step_reaching_lora_final": first_reach})
    lines = ["# diffusion_nera: NeRA (KAN) vs LoRA vs DoRA on an unseen texture", "",
             "Written by `python bench/diffusion_gpu.py --stage report` (raw numbers: `diffusion/raw.json`).", "",
             f"Base: {base_card['command']} -- held-out val loss {base_card['val_denoising_loss']:.4f}, "
             f"classifier test accuracy {base_card['classifier_test_accuracy']}, base concept score {base_card['base_samples']['concept_score']:.3f}, "
             f"base prompt fidelity {base_card['base_samples']['prompt_fidelity']:.3f}.", "",
             "| adapter | rank | trainable params | lr (chosen on concept_val) | final loss | final concept score | prompt fidelity | first step >= LoRA's final score |",
             "|---|---|---|---|---|---|---|---|"]
    for a, r in runs.items():
        scores = [h["eval_concept_score"] for h in r["history"] if "eval_concept_score" in h]
        lines.append(f"| {a} | {r['rank']} | {r['trainable_params']} | {r['lr']:g} | {r['history'][-1]['loss']:.4f} | {scores[-1]:.3f} | "
                     f"{r['prompt_fidelity']:.3f} | {first_reach[a]} |")
    verdict = ("NeRA reaches LoRA's final concept score earlier" if first_reach["nera"] is not None and first_reach["nera"] < first_reach["lora"]
               else "NeRA does not reach LoRA's final concept score in fewer steps on this task")
    lines += ["", f"Verdict: {verdict}.", "", "![samples](diffusion/samples.png)", "![concept score](diffusion/concept_score.png)",
              "![loss](diffusion/loss_curves.png)", ""]
    write_text(docs, "\n".join(lines))
    print("report:", docs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", default="all", choices=["ship", "base", "lr", "train", "report", "all"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="bench_out/diffusion")
    p.add_argument("--tiny", action="store_true")
    a = p.parse_args()
    out = Path(a.out)
    s = sizes(a.tiny, a.device)
    docs = out / "report" / "diffusion.md" if a.tiny else ROOT / "docs" / "results" / "diffusion.md"
    for stage in (["ship", "base", "lr", "train", "report"] if a.stage == "all" else [a.stage]):
        t = time.time()
        if stage == "report":
            stage_report(out, s, a.device, docs)
        else:
            {"ship": stage_ship, "base": stage_base, "lr": stage_lr, "train": stage_train}[stage](out, s, a.device)
        print(f"stage {stage}: {time.time() - t:.0f} s")


if __name__ == "__main__":
    main()
