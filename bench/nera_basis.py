"""NeRA's spline with and without its materialised basis: peak memory, bytes kept for backward, step time (CPU).

``local`` is ``core.functional.nera.kan_layer`` (k + 1 active B-splines per input, summed by ``embedding_bag``);
``dense`` is ``kan_layer_dense``, the previous form (Cox-de Boor recursion to the full ``[tokens, d_in, G + k]``
basis, then a GEMM). Both run NeRA's whole adapter path on tokens (down KAN ``d_in -> r``, up KAN ``r -> d_out``),
forward + backward, fp32, default options (G = 5, cubic). Per case and form, in a fresh child process:
peak RSS growth over the first full-size step (``ru_maxrss`` high-water mark; lazy library set-up is run before on a
4-token input), the
bytes autograd keeps for backward (``saved_tensors_hooks``), and the median wall time of ``--repeats`` steps.
Forms alternate per round (``--rounds``); medians [min, max] over rounds are written to
``docs/results/nera_basis.{json,md}``.

    python bench/nera_basis.py --threads 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT_JSON = ROOT / "docs" / "results" / "nera_basis.json"
OUT_MD = ROOT / "docs" / "results" / "nera_basis.md"
CASES = {  # name: (tokens, d_in, rank, d_out)
    "vit_s_block_fc": (8 * 197, 384, 8, 384),
    "vit_b_block_fc": (8 * 197, 768, 8, 768),
}
FORMS = ("local", "dense")


def child(case: str, form: str, repeats: int, threads: int) -> dict:
    """One case and form in this (fresh) process; returns the measurements."""
    from lowrank_vision.core.functional import nera as F_kan

    torch.set_num_threads(threads)
    tokens, d_in, rank, d_out = CASES[case]
    grid, order = 5, 3
    g = torch.Generator().manual_seed(0)
    knots = F_kan.knot_vector(grid, order, 3.0)
    x = torch.randn(tokens, d_in, generator=g).requires_grad_()
    down = [torch.randn(rank, d_in, generator=g) * 0.05, torch.randn(rank, d_in, grid + order, generator=g) * 0.05,
            torch.ones(d_in), torch.zeros(d_in)]
    up = [torch.randn(d_out, rank, generator=g) * 0.05, torch.randn(d_out, rank, grid + order, generator=g) * 0.05,
          torch.ones(rank), torch.zeros(rank)]
    params = [p.requires_grad_() for p in down + up]
    layer = F_kan.kan_layer if form == "local" else F_kan.kan_layer_dense

    def step(saved=None):
        if saved is None:
            out = layer(layer(x, *down, knots, order), *up, knots, order)
        else:
            with torch.autograd.graph.saved_tensors_hooks(lambda t: (saved.append(t.numel() * t.element_size()), t)[1], lambda t: t):
                out = layer(layer(x, *down, knots, order), *up, knots, order)
        out.square().mean().backward()
        for p in [x, *params]:
            p.grad = None

    small = x[:4].detach().requires_grad_()  # lazy library set-up on a tiny input, so it stays out of the peak below
    layer(layer(small, *down, knots, order), *up, knots, order).square().mean().backward()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # inputs built; the high-water mark of the first full step
    saved: list[int] = []
    step(saved)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    step()  # warm-up before timing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"peak_rss_growth_mib": peak_kib / 1024, "saved_for_backward_mib": sum(saved) / 2**20,
            "step_ms": statistics.median(times) * 1e3}


def spread(values: list[float], digits: int = 1) -> str:
    med = statistics.median(values)
    return f"{med:.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]" if len(values) > 1 else f"{med:.{digits}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--child", nargs=2, metavar=("CASE", "FORM"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.repeats, args.threads)))
        return 0
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {unknown}; choose from {list(CASES)}")
    from lowrank_vision.core.files import write_json, write_text

    rows: dict = {c: {f: [] for f in FORMS} for c in cases}
    for _ in range(args.rounds):
        for case in cases:
            for form in FORMS:
                cmd = [sys.executable, __file__, "--child", case, form, "--repeats", str(args.repeats), "--threads", str(args.threads)]
                result = subprocess.run(cmd, capture_output=True, text=True, check=True)
                rows[case][form].append(json.loads(result.stdout.strip().splitlines()[-1]))
    command = "python bench/nera_basis.py " + " ".join(argv if argv is not None else sys.argv[1:])
    env = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "torch": torch.__version__, "threads": args.threads,
           "rounds": args.rounds, "repeats": args.repeats, "command": command.strip()}
    write_json(OUT_JSON, {"env": env, "cases": {c: {"shape": dict(zip(("tokens", "d_in", "rank", "d_out"), CASES[c])), **rows[c]}
                                                for c in cases}}, indent=1)
    lines = ["# NeRA spline: local evaluation vs the materialised basis (CPU)", "", __doc__.split("\n\n")[0].strip(), "",
             f"Command: `{env['command']}` ({env['machine']}, torch {env['torch']}, {args.threads} threads, {args.rounds} rounds of "
             f"{args.repeats} steps). Raw numbers: `docs/results/nera_basis.json`. Values: median [min, max] over rounds.", "",
             "| case (tokens, d_in, r, d_out) | form | peak RSS growth MiB | kept for backward MiB | step ms |", "|---|---|---|---|---|"]
    for case in cases:
        for form in FORMS:
            r = rows[case][form]
            lines.append(f"| {case} {CASES[case]} | {form} | {spread([m['peak_rss_growth_mib'] for m in r])} | "
                         f"{spread([m['saved_for_backward_mib'] for m in r])} | {spread([m['step_ms'] for m in r])} |")
        ratio = [a["step_ms"] / b["step_ms"] for a, b in zip(rows[case]["local"], rows[case]["dense"])]
        mem = [a["peak_rss_growth_mib"] / max(b["peak_rss_growth_mib"], 1e-9) for a, b in zip(rows[case]["local"], rows[case]["dense"])]
        lines.append(f"| {case} | local / dense | {spread(mem, 2)} | | {spread(ratio, 2)} |")
    write_text(OUT_MD, "\n".join(lines) + "\n")
    print("\n".join(lines[-(3 * len(cases)):]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
