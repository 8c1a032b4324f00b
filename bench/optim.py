"""Low-rank training tools: GaLore/Fira optimizer state and step time vs AdamW; LoRA vs LoRA-GA vs LoRA-SB init.

Part 1 (``state``): a ViT-B/16 (timm, built from its config, random weights, no download) and a MONAI 3-D
UNet. One real backward gives the gradients; every optimizer then steps on those same gradients.
Projected layers: every weight of 2 or more dims whose unfolded matrix has a short side >= 16
(attention/MLP linears, patch embedding, head; every conv kernel of the UNet), rank = 1/4 of that
short side, plain AdamW on the rest. Memory = bytes of optimizer state held for the projected layers
(AdamW: ``exp_avg`` + ``exp_avg_sq``; GaLore: projected moments + SVD basis, or DCT indices + one DCT
matrix per size). Step time = wall time of ``optimizer.step()``: the first step of a fresh optimizer
(it builds the bases: SVD or DCT selection) and the following plain steps, median over interleaved
rounds (methods in turn in each round), with min-max spread; amortised over ``update_proj_gap = 200``.

Part 2 (``init``): a small CNN pre-trained on a synthetic 8-class texture task is fine-tuned on a
disjoint 4-class task (new templates, new head): LoRA r = 4 on its three convolutions plus the new head,
Adam. Learning rate (and LoRA-SB's step size) chosen per method on a validation split; then the loss on a
fixed 256-sample training subset is recorded at every step for 3 seeds. Question: do LoRA-GA / LoRA-SB
reach plain LoRA's step-N loss in <= N/2 steps?

    python bench/optim.py                    # both parts, CPU, writes docs/benchmarks_optim.{md,json}
    python bench/optim.py --parts init       # one part (the other part's stored results are kept)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from lowrank_vision.core import apply
from lowrank_vision.core.files import write_json, write_text
from lowrank_vision.core.init import LoRAGAInit, LoRASBInit
from lowrank_vision.core.optim import Fira, GaLore, optimizer_state_bytes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks_optim.json"
REPORT = ROOT / "docs" / "benchmarks_optim.md"
GAP = 200
METHODS = ("adamw", "galore_svd", "galore_dct", "fira_svd")
SELECTION_SEEDS = (100, 101)


# -- part 1: optimizer state and step time --------------------------------------------------------------------
def build_vit_b() -> tuple[nn.Module, tuple]:
    import timm

    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
    return model, (torch.randn(1, 3, 224, 224),)


def build_unet3d() -> tuple[nn.Module, tuple]:
    from monai.networks.nets import UNet

    model = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
    return model, (torch.randn(1, 1, 32, 32, 32),)


MODELS = {"vit_b": ("ViT-B/16 (timm, 224 px, 10 classes)", build_vit_b), "unet3d": ("MONAI UNet 3-D (16-256 ch, 2 res units)", build_unet3d)}


def projected(p: torch.Tensor) -> bool:
    return p.dim() >= 2 and min(p.shape[0], math.prod(p.shape[1:])) >= 16


def make_optimizer(method: str, params: list[nn.Parameter]):
    proj = [p for p in params if projected(p)]
    rest = [p for p in params if not projected(p)]
    if method == "adamw":
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, foreach=False), proj
    cls, projection = {"galore_svd": (GaLore, "svd"), "galore_dct": (GaLore, "dct"), "fira_svd": (Fira, "svd")}[method]
    groups = [{"params": proj, "rank": 0.25, "update_proj_gap": GAP, "scale": 0.25, "projection": projection}, {"params": rest}]
    return cls(groups, lr=1e-4), proj


def adamw_state_bytes(opt: torch.optim.Optimizer, params: list[nn.Parameter]) -> int:
    return sum(v.numel() * v.element_size() for p in params for k, v in opt.state[p].items() if k != "step" and torch.is_tensor(v))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_state(model_key: str, rounds: int, plain_steps: int) -> dict:
    description, build = MODELS[model_key]
    torch.manual_seed(0)
    model, inputs = build()
    out = model(*inputs)
    out.float().square().mean().backward()
    params = [p for p in model.parameters() if p.grad is not None]
    proj = [p for p in params if projected(p)]
    row = {"model": description, "projected_tensors": len(proj), "projected_params": sum(p.numel() for p in proj),
           "all_params": sum(p.numel() for p in params), "methods": {}}
    backup = [p.detach().clone() for p in params]
    for r in range(rounds):
        for method in METHODS:
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)
            opt, proj = make_optimizer(method, params)
            first = timed(opt.step)
            plain = [timed(opt.step) for _ in range(plain_steps)]
            entry = row["methods"].setdefault(method, {"first_step_s": [], "plain_step_s": []})
            entry["first_step_s"].append(first)
            entry["plain_step_s"].append(statistics.median(plain))
            if r == 0:
                entry["state_bytes"] = adamw_state_bytes(opt, proj) if method == "adamw" else optimizer_state_bytes(opt, proj)
            print(f"  {model_key} round {r} {method}: first {first:.3f} s, plain {statistics.median(plain):.3f} s", flush=True)
            del opt
    adam = row["methods"]["adamw"]["state_bytes"]
    for entry in row["methods"].values():
        entry["state_vs_adamw"] = entry["state_bytes"] / adam
        first, plain = statistics.median(entry["first_step_s"]), statistics.median(entry["plain_step_s"])
        entry["amortised_step_s"] = (first + (GAP - 1) * plain) / GAP
    return row


# -- part 2: LoRA vs LoRA-GA vs LoRA-SB init on a small fine-tuning task ----------------------------------------
def templates(classes: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(classes, 3, 16, 16, generator=g)
    kernel = torch.ones(3, 1, 5, 5) / 25
    return nn.functional.conv2d(nn.functional.pad(noise, (2, 2, 2, 2), mode="circular"), kernel, groups=3) * 3


def samples(tmpl: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, tmpl.shape[0], (n,), generator=g)
    shifts = torch.randint(-3, 4, (n, 2), generator=g)
    x = torch.stack([torch.roll(tmpl[c], (int(s[0]), int(s[1])), dims=(1, 2)) for c, s in zip(y.tolist(), shifts)])
    return x + 0.8 * torch.randn(x.shape, generator=g), y


class SmallCNN(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))
        return self.head(x.mean((2, 3)))


def pretrained_backbone() -> SmallCNN:
    torch.manual_seed(0)
    model = SmallCNN(8)
    x, y = samples(templates(8, seed=100), 2048, seed=101)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, len(y), (64,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model


def ce(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def finetune(base: SmallCNN, data: dict, init: str, lr: float, seed: int, steps: int, option: float = 1.0, record: bool = True,
             task: str = "new_classes") -> dict:
    """``option``: LoRA-GA's gamma or LoRA-SB's step size (unused by plain LoRA)."""
    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    if task == "new_classes":
        model.head = nn.Linear(32, 4)
        where = dict(targets=["c1", "c2", "c3"], trainable=["head"])
    else:
        where = dict(targets=["c1", "c2", "c3", "head"])
    g = torch.Generator().manual_seed(seed)
    x, y = data["train"]
    order = [torch.randint(0, len(y), (32,), generator=g) for _ in range(steps + 4)]
    init_batches = [(x[i], y[i]) for i in order[steps:]]
    kwargs = {}
    if init == "lora_ga":
        kwargs = dict(init=LoRAGAInit(gamma=option), init_data=init_batches, init_loss=ce)
    elif init == "lora_sb":
        kwargs = dict(init=LoRASBInit(step_size=option), init_data=init_batches, init_loss=ce)
    report = apply(model, "lora", rank=4, alpha=4, **where, **kwargs)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    fx, fy = data["train_probe"]
    curve = []

    def probe():
        with torch.no_grad():
            curve.append(ce(model, (fx, fy)).item())

    probe()
    for i in range(steps):
        opt.zero_grad()
        ce(model, (x[order[i]], y[order[i]])).backward()
        opt.step()
        if record:
            probe()
    with torch.no_grad():
        vx, vy = data["val"]
        tx, ty = data["test"]
        val_loss = ce(model, (vx, vy)).item()
        test_acc = (model(tx).argmax(-1) == ty).float().mean().item()
    return {"curve": curve, "val_loss": val_loss, "test_acc": test_acc, "trainable": report.trainable_params}


def shifted(tmpl: torch.Tensor) -> torch.Tensor:
    """The domain-shift task: the same 8 classes with colour channels permuted, contrast inverted and mirrored."""
    return -tmpl[:, [2, 0, 1]].flip(-1)


TASKS = {
    "new_classes": ("new classes", "a disjoint 4-class task (new templates, new head; LoRA on the 3 convs, the head trained in full)"),
    "domain_shift": ("domain shift", "the same 8 classes after a domain shift (colour channels permuted, contrast inverted, mirrored; "
                     "pre-trained head kept; LoRA on the 3 convs and the head)"),
}


def bench_init(steps: int, seeds: int, task: str, base: SmallCNN) -> dict:
    tmpl = templates(4, seed=200) if task == "new_classes" else shifted(templates(8, seed=100))
    train = samples(tmpl, 512, seed=201)
    data = {"train": train, "train_probe": (train[0][:256], train[1][:256]), "val": samples(tmpl, 256, seed=202),
            "test": samples(tmpl, 256, seed=203)}
    lrs = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    grid = {"lora": [(lr, None) for lr in lrs], "lora_ga": [(lr, g) for lr in lrs for g in (1.0, 16.0)],
            "lora_sb": [(lr, s) for lr in lrs[1:] for s in (0.01, 0.03, 0.1)]}
    chosen, search = {}, {}
    for method, options in grid.items():
        scores = []
        for lr, s in options:
            val = statistics.mean(finetune(base, data, method, lr, seed=seed, steps=steps, option=s or 1.0, record=False, task=task)["val_loss"]
                                  for seed in SELECTION_SEEDS)
            scores.append((val, lr, s))
            print(f"  select {task} {method} lr={lr} option={s}: val loss {val:.4f}", flush=True)
        search[method] = [{"lr": lr, "option": s, "val_loss": v} for v, lr, s in scores]
        _, lr, s = min(scores, key=lambda t: t[0])
        chosen[method] = {"lr": lr, "option": s}
    runs = {m: [finetune(base, data, m, c["lr"], seed=seed, steps=steps, option=c["option"] or 1.0, task=task) for seed in range(seeds)]
            for m, c in chosen.items()}
    out = {"task": TASKS[task][1], "steps": steps, "seeds": seeds, "chosen": chosen, "search": search, "methods": {}}
    for method, rs in runs.items():
        curves = torch.tensor([r["curve"] for r in rs])
        median = curves.median(0).values
        out["methods"][method] = {
            "trainable_params": rs[0]["trainable"], "median_curve": median.tolist(),
            "min_curve": curves.min(0).values.tolist(), "max_curve": curves.max(0).values.tolist(),
            "test_acc": [r["test_acc"] for r in rs],
        }
    target = out["methods"]["lora"]["median_curve"][steps]
    for method, row in out["methods"].items():
        reached = [i for i, v in enumerate(row["median_curve"]) if v <= target]
        row["steps_to_lora_final"] = reached[0] if reached else None
    out["lora_final_loss"] = target
    return out


# -- report -----------------------------------------------------------------------------------------------------
def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def render(store: dict) -> str:
    env = store.get("environment", {})
    lines = ["# Benchmarks: low-rank training tools (GaLore, Fira, LoRA-GA, LoRA-SB)", "",
             f"Written by `python bench/optim.py` ({env.get('cpu', '?')}, torch {env.get('torch', '?')}, "
             f"{env.get('threads', '?')} thread(s)); raw numbers in `docs/benchmarks_optim.json`. CPU only: step times are "
             "for comparing methods with each other on this host, not absolute speeds.", ""]
    state = store.get("state")
    if state:
        lines += ["## Optimizer state and step time: GaLore / Fira vs AdamW", "",
                  state["setup"], ""]
        for key, row in state["models"].items():
            lines += [f"### {row['model']}", "",
                      f"{row['projected_tensors']} projected tensors, {row['projected_params']:,} of {row['all_params']:,} parameters.", "",
                      "| method | state of projected layers (MiB) | vs AdamW | first step, s (builds bases) | plain step, s | amortised step (gap 200), s |",
                      "|---|---|---|---|---|---|"]
            for method, e in row["methods"].items():
                lines.append(f"| {method} | {e['state_bytes'] / 2**20:.1f} | {100 * e['state_vs_adamw']:.1f}% | {_spread(e['first_step_s'])} | "
                             f"{_spread(e['plain_step_s'])} | {e['amortised_step_s']:.3f} |")
            lines.append("")
        lines += ["Acceptance (measured above):", ""]
        for key, row in state["models"].items():
            m = row["methods"]
            svd, dct = statistics.median(m["galore_svd"]["first_step_s"]), statistics.median(m["galore_dct"]["first_step_s"])
            lines.append(f"- {row['model']}: GaLore state {100 * m['galore_svd']['state_vs_adamw']:.1f}% (SVD) / "
                         f"{100 * m['galore_dct']['state_vs_adamw']:.1f}% (DCT) of AdamW's for the projected layers "
                         f"({'<=' if max(m['galore_svd']['state_vs_adamw'], m['galore_dct']['state_vs_adamw']) <= 0.35 else '>'} 35%); "
                         f"basis-building step DCT {dct:.3f} s vs SVD {svd:.3f} s ({'DCT faster' if dct < svd else 'DCT NOT faster'}); "
                         f"amortised over gap {GAP}: DCT {m['galore_dct']['amortised_step_s']:.3f} s vs SVD {m['galore_svd']['amortised_step_s']:.3f} s "
                         f"({'DCT faster' if m['galore_dct']['amortised_step_s'] < m['galore_svd']['amortised_step_s'] else 'DCT NOT faster'}).")
        lines += ["", "Between basis updates both projections run the same two matmuls (project, project back; DCT adds one column "
                  "gather from its stored indices); the DCT saves the SVD at each basis update. On this CPU those matmuls make a plain "
                  "GaLore step slower than AdamW's element-wise step: GaLore buys optimizer memory, not speed.", ""]
    inits = store.get("init", {})
    if inits:
        lines += ["## Convergence: LoRA vs LoRA-GA vs LoRA-SB initialisation", "", inits["setup"], ""]
    for key, init in inits.get("tasks", {}).items():
        n = init["steps"]
        lines += [f"### Task: {TASKS[key][0]}", "", f"Fine-tuning on {init['task']}.", "",
                  f"Plain LoRA's median loss at step N = {n}: {init['lora_final_loss']:.4f}.", "",
                  "| init | trainable params | lr (chosen on val) | gamma (GA) / step size (SB), chosen on val | loss at N/4, N/2, N (median of seeds, min-max) | "
                  "first step reaching LoRA's step-N loss | <= N/2? | test accuracy (seeds) |", "|---|---|---|---|---|---|---|---|"]
        for method, row in init["methods"].items():
            c, lo, hi = row["median_curve"], row["min_curve"], row["max_curve"]
            cells = ", ".join(f"{c[i]:.3f} ({lo[i]:.3f}-{hi[i]:.3f})" for i in (n // 4, n // 2, n))
            reach = row["steps_to_lora_final"]
            half = "n/a (reference)" if method == "lora" else ("yes" if reach is not None and reach <= n // 2 else "no")
            chosen = init["chosen"][method]
            lines.append(f"| {method} | {row['trainable_params']:,} | {chosen['lr']:g} | {chosen['option'] if chosen['option'] else '-'} | {cells} | "
                         f"{reach if reach is not None else 'not within N'} | {half} | {', '.join(f'{a:.3f}' for a in row['test_acc'])} |")
        lines.append("")
        lines.append(init.get("verdict", ""))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def verdict(init: dict) -> str:
    n, out = init["steps"], []
    for method in ("lora_ga", "lora_sb"):
        reach = init["methods"][method]["steps_to_lora_final"]
        if reach is not None and reach <= n // 2:
            out.append(f"{method} reached plain LoRA's step-{n} loss at step {reach} (<= N/2 = {n // 2}): the acceptance holds on this task.")
        elif reach is not None:
            out.append(f"{method} reached plain LoRA's step-{n} loss only at step {reach} (> N/2 = {n // 2}): the acceptance does NOT hold on this task.")
        else:
            out.append(f"{method} did not reach plain LoRA's step-{n} loss within {n} steps: the acceptance does NOT hold on this task.")
    return " ".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="state,init", help="comma list of: state, init")
    parser.add_argument("--models", default="vit_b,unet3d")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plain-steps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps N of the init comparison")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true", help="re-render docs/benchmarks_optim.md from the stored JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = set() if args.report_only else set(args.parts.split(","))
    store = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if parts:
        store["environment"] = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": args.threads,
                                "python": sys.version.split()[0]}
    if "state" in parts:
        models = {}
        for key in args.models.split(","):
            models[key] = bench_state(key, args.rounds, args.plain_steps)
        store["state"] = {"models": models, "rounds": args.rounds, "command": "python bench/optim.py --parts state",
                          "setup": (f"Same gradients (one real backward, batch 1) for every method; rank = 1/4 of each projected layer's "
                                    f"short side, scale 0.25, update_proj_gap {GAP}. {args.rounds} interleaved rounds; times are median "
                                    f"(min-max) over rounds, each plain-step value the median of {args.plain_steps} steps. Fira = GaLore-SVD "
                                    "plus the scaled residual and limiter (same state plus one scalar per layer).")}
        write_json(RESULTS, store)
    if "init" in parts:
        base = pretrained_backbone()
        tasks = {}
        for task in TASKS:
            init = bench_init(args.steps, args.seeds, task, base)
            init["verdict"] = verdict(init)
            tasks[task] = init
        store["init"] = {"tasks": tasks, "command": "python bench/optim.py --parts init", "setup": (
            "Small CNN (3 convs, 16-32-32 ch, 16x16 RGB input) pre-trained 300 steps (Adam) on a synthetic 8-class texture task "
            "(smoothed-noise templates, random shifts of up to 3 px, noise 0.8), then fine-tuned with LoRA r = 4, alpha 4; Adam, "
            f"batch 32, N = {args.steps} steps; LoRA-GA / LoRA-SB estimate the gradient on 4 batches of 32 training samples. "
            "lr (and LoRA-GA's gamma, LoRA-SB's step size) chosen per method by the mean validation loss at step N over seeds 100 and 101 (grid in the JSON); curves: "
            f"loss on a fixed 256-sample training subset after every step, {args.seeds} seeds (0..{args.seeds - 1}), median with "
            "min-max. LoRA-SB is the LoRA-XS form: only R (r x r per layer) trains.")}
        write_json(RESULTS, store)
    write_text(REPORT, render(store))
    print(REPORT.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
