"""Time the trainer's compiled-weight-build rule (issue 17, item 4) in real training runs on a GPU.

    python3 bench/fused_builds_gpu.py --device cuda --rounds 3 --steps 160

``core.train.fit(..., TrainConfig(cuda_graph=True))`` switches convolution adapters (and DoRA everywhere) to the
compiled weight build before it captures the whole step (``core.adapters.base.fuse_builds_for_capture``;
``TrainConfig.cuda_graph_fused_builds``). The rule was chosen from ``bench/speed_gpu.py``'s ``fused`` rows; this
script times it where it is used: the fine-tune step of the plugins whose GPU recipes capture the step.

Cases (random tensors of each recipe's GPU shapes, each recipe's trainer settings: precision, clipping, schedule;
the values do not change the step time):

- ``sr_dsclora``       DSCLoRA fine-tune of a deployed SPAN x4 (conv_lora in every block and the tail convs) with the
                       distillation loss; batch 64 of 24-px LR / 96-px HR crops (``bench/sr_gpu.py``'s recipe).
- ``hemorrhage_cp_lora`` CP-LoRA rank 16 on every conv of the ``real`` preset's MONAI UNet 3D; batch 4 of 96x96x48.
- ``hemorrhage_cp_dora`` the same with CP-DoRA.

Each case is run with the rule on and off, interleaved (round r: every case, off then on; the order flips every
round), ``--steps`` optimizer steps each; the step time is (wall from step ``--warmup`` to the last) / steps between,
with a device sync at both ends only. The ratio on / off is reported per round; the median and [min, max] over rounds
go to ``docs/results/fused_builds_gpu.md`` and ``docs/results/fused_builds_gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CASES = ("sr_dsclora", "hemorrhage_cp_lora", "hemorrhage_cp_dora")


def _loader(tensors: dict | tuple, n_batches: int, batch: int):
    from torch.utils.data import DataLoader, Dataset

    class _Fixed(Dataset):  # one fixed batch repeated: no data work on the host beyond the copy
        def __len__(self):
            return n_batches * batch

        def __getitem__(self, i):
            j = i % batch
            if isinstance(tensors, dict):
                return {k: v[j] for k, v in tensors.items()}
            return tuple(v[j] for v in tensors)

    return DataLoader(_Fixed(), batch_size=batch, shuffle=False, drop_last=True, pin_memory=True)


def build_case(name: str):
    """``(model, loss_fn, loader_factory, recipe TrainConfig)`` of one case, built on the CPU with a fixed seed."""
    torch.manual_seed(0)
    if name == "sr_dsclora":
        from lowrank_vision.plugins.sr_dsclora.config import sr_train_defaults
        from lowrank_vision.plugins.sr_dsclora.distill import DistillationLoss, attach_dsclora
        from lowrank_vision.plugins.sr_dsclora.model import build_span, reparameterize

        teacher = reparameterize(build_span(4).eval())
        student = reparameterize(build_span(4).eval())
        student.load_state_dict(teacher.state_dict())
        student.train()
        attach_dsclora(student)
        data = (torch.rand(64, 3, 24, 24), torch.rand(64, 3, 96, 96))
        return student, DistillationLoss(teacher), lambda steps: _loader(data, steps, 64), sr_train_defaults()
    if name.startswith("hemorrhage_"):
        from lowrank_vision.plugins.hemorrhage_seg.config import PRESETS, trainer
        from lowrank_vision.plugins.hemorrhage_seg.model import build_network
        from lowrank_vision.plugins.hemorrhage_seg.recipes import apply_strategy, seg_loss

        net = build_network(PRESETS["real"].net)
        apply_strategy(net, name.removeprefix("hemorrhage_"), rank=16)
        data = {"image": torch.randn(4, 2, 96, 96, 48), "label": (torch.rand(4, 1, 96, 96, 48) > 0.97).float()}
        return net, seg_loss, lambda steps: _loader(data, steps, 4), trainer(150, 1e-2)
    raise ValueError(f"case must be one of {CASES}, got {name!r}")


def time_run(name: str, fused: bool, steps: int, warmup: int, device: str, precision: str = "recipe") -> dict:
    """One training run of ``name`` (``precision``: ``"recipe"`` keeps the recipe's, else a ``TrainConfig.mixed_precision``);
    returns its step time and the trainer's graph record."""
    from lowrank_vision.core.train import fit

    model, loss_fn, make_loader, recipe = build_case(name)
    marks: dict[int, float] = {}

    def clock(step: int, _model, _metrics) -> None:
        if step in (warmup, steps):
            if device == "cuda":
                torch.cuda.synchronize()
            marks[step] = time.perf_counter()

    if precision != "recipe":
        recipe = replace(recipe, mixed_precision=precision)
    config = replace(recipe, max_steps=steps, warmup_steps=min(recipe.warmup_steps, warmup), log_every=steps,
                     cuda_graph=True, cuda_graph_fused_builds=fused, cpu=device == "cpu", progress=False, output_dir=None)
    result = fit(model, make_loader(steps), loss_fn, config, callbacks=[clock])
    record = dict(result.cuda_graph)
    return {"case": name, "precision": config.mixed_precision, "fused_rule": fused, "step_ms": 1e3 * (marks[steps] - marks[warmup]) / (steps - warmup),
            "graph_steps": record.get("graph_steps"), "captured": record.get("captured"),
            "fused_builds": len(record["fused_builds"]) if record.get("fused_builds") is not None else None,
            "fallback_reason": record.get("fallback_reason"), "final_loss": result.final_loss}


def _median(values: list[float]):
    return statistics.median(values) if values else None


def summarise(runs: list[dict]) -> dict:
    """Per case: the on/off step-time ratio of every round, its median and range, and both medians in ms."""
    out = {}
    for case in dict.fromkeys(f"{r['case']} ({r['precision']})" for r in runs):
        by_round: dict[int, dict] = {}
        for r in runs:
            if f"{r['case']} ({r['precision']})" == case:
                by_round.setdefault(r["round"], {})[r["fused_rule"]] = r["step_ms"]
        ratios = [v[True] / v[False] for v in by_round.values() if True in v and False in v]
        out[case] = {
            "rounds": len(ratios),
            "on_over_off": ratios,
            "median": statistics.median(ratios) if ratios else None,
            "min": min(ratios) if ratios else None,
            "max": max(ratios) if ratios else None,
            "off_ms_median": _median([v[False] for v in by_round.values() if False in v]),
            "on_ms_median": _median([v[True] for v in by_round.values() if True in v]),
        }
    return out


def render(report: dict) -> str:
    lines = [
        "# The trainer's compiled-weight-build rule, timed in training (issue 17, item 4)",
        "",
        f"Written by `{report['command']}` on {report['machine']} ({report['versions']}). Random tensors of each "
        "recipe's GPU shapes, each recipe's trainer (clipping, schedule; precision as the row says, `no` = fp32), whole-step CUDA graph; rule on = `TrainConfig(cuda_graph_fused_builds=True)` "
        "(the default), off = `False`. Step time = wall from step "
        f"{report['warmup']} to step {report['steps']} / steps between; {report['rounds']} interleaved rounds.",
        "",
        "| case (precision) | layers switched | captured | off ms/step (median) | on ms/step (median) | on / off median [min, max] | rounds |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, s in report["summary"].items():
        mine = [r for r in report["runs"] if f"{r['case']} ({r['precision']})" == case]
        switched = {r["fused_builds"] for r in mine if r["fused_rule"]}
        captured = f"{sum(bool(r['captured']) for r in mine)}/{len(mine)}"
        rng = f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]" if s["median"] is not None else "n/a"
        ms = [f"{v:.2f}" if v is not None else "n/a" for v in (s["off_ms_median"], s["on_ms_median"])]
        lines.append(f"| {case} | {', '.join(str(x) for x in sorted(switched, key=str))} | {captured} | {ms[0]} | {ms[1]} | {rng} | "
                     f"{s['rounds']} |")
    lines += ["", "Every run's graph record (captured, graph steps, fallback) is in `docs/results/fused_builds_gpu.json`.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--warmup", type=int, default=40, help="steps before the clock starts (warm-up, capture, compile)")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--precisions", default="recipe,bf16", help="comma list: recipe (each recipe's own), no, bf16, fp16")
    p.add_argument("--budget-s", type=float, default=480.0, help="no new run starts after this many seconds")
    p.add_argument("--out", default=str(ROOT / "docs" / "results"))
    args = p.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    for c in cases:
        if c not in CASES:
            p.error(f"--cases: unknown case {c!r}; expected some of {', '.join(CASES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    if not 0 < args.warmup < args.steps:
        p.error(f"--warmup must be in (0, --steps={args.steps}), got {args.warmup}")
    precisions = [x for x in args.precisions.split(",") if x]
    for x in precisions:
        if x not in ("recipe", "no", "bf16", "fp16"):
            p.error(f"--precisions: unknown {x!r}; expected some of recipe, no, bf16, fp16")
    start, runs = time.perf_counter(), []
    for rnd in range(args.rounds):
        for case in cases:
            for precision in precisions:
                for fused in ((False, True) if rnd % 2 == 0 else (True, False)):
                    if time.perf_counter() - start > args.budget_s:
                        break
                    r = time_run(case, fused, args.steps, args.warmup, args.device, precision) | {"round": rnd}
                    runs.append(r)
                    print(json.dumps(r), flush=True)
    machine = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    report = {"command": "python3 bench/fused_builds_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine, "versions": f"torch {torch.__version__}, python {platform.python_version()}",
              "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "runs": runs, "summary": summarise(runs)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path, text in ((out / "fused_builds_gpu.json", json.dumps(report, indent=2)), (out / "fused_builds_gpu.md", render(report))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
