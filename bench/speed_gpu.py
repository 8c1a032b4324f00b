"""Issue 17's GPU rows as resumable jobs of <= 10 minutes: ``bench/adapters.py`` once per (mode, row) not yet stored.

    python3 bench/speed_gpu.py --budget-s 540            # on the H200; carry docs/bench_results.json back and forth
    python3 bench/speed_gpu.py --dry-run                 # here: what the next job would run

``bench/adapters.py`` writes ``docs/bench_results.json`` after every row, so a job cut short keeps the rows it
finished. This driver skips a (mode, row) whose stored rows already have ``--rounds`` rounds for every variant of
that mode, and starts a row only while the budget left exceeds the row's expected seconds (``EXPECTED_S``, from the
2026-12-02 runs, or the longest row seen in this job). Modes: ``eager`` (kernel-time and PEFT goals) and
``cuda_graph`` (whole-step graph goals). Rows run smallest first so a short job still finishes some.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapters import MODES, _rows, rounds_of, store_key  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("unet3d_small", "resnet50", "vit_b", "diffusers_unet", "vit_l", "unet3d_large")
"""``adapters.GPU_ROWS``, smallest first."""
ROW_HOSTS = {"unet3d_small": "monai", "unet3d_large": "monai", "vit_b": "timm", "vit_l": "timm", "diffusers_unet": "diffusers",
             "resnet50": "torchvision"}
"""The package each row's model comes from (every row also needs ``peft`` for its PEFT variants)."""
EAGER_VARIANTS = "full,floor,peft_lora,ours:lora:auto,ours:lora:weight,ours:lora:activation,ours:cp_lora:auto,ours:dora:auto"
EXPECTED_S = 150.0
"""Guess for a row not timed in this job yet (unet3d_small, 8 variants x 3 rounds + profile: about 100 s)."""


def stored_rounds(results: Path, mode: str, row: str) -> int:
    """The fewest rounds any stored variant of ``row`` has under ``mode`` (0 when the row is absent)."""
    store = json.loads(results.read_text()) if results.is_file() else {}
    return min((len(rounds_of(r)) for r in _rows(store, store_key("cuda", mode=mode), row).values()), default=0)


def missing_hosts(row: str) -> list[str]:
    """The packages ``row`` needs that are not importable here (a GPU image may lack them: carry their wheels)."""
    return [m for m in (ROW_HOSTS[row], "peft") if importlib.util.find_spec(m) is None]


def command(mode: str, row: str, rounds: int, results: Path) -> list[str]:
    cmd = [sys.executable, str(ROOT / "bench" / "adapters.py"), "--device", "cuda", "--rounds", str(rounds), "--models", row,
           "--mode", mode, "--results", str(results), "--no-inference"]
    return cmd + (["--variants", EAGER_VARIANTS] if mode == "eager" else [])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=540.0, help="wall clock of this job")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per row (>= 3 for a claim)")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows, run in this order")
    p.add_argument("--modes", default="eager,cuda_graph", help="comma-separated: eager, cuda_graph")
    p.add_argument("--results", default=str(ROOT / "docs" / "bench_results.json"))
    p.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    if bad := [m for m in modes if m not in MODES]:  # adapters.MODES: eager, cuda_graph
        p.error(f"--modes: unknown {bad}; choose from {list(MODES)}")
    results, start, seen = Path(args.results), time.time(), []
    for row in args.rows.split(","):
        if missing := missing_hosts(row):  # fail fast: a missing host would fail the row after its start-up
            print(f"skip {row}: needs {', '.join(missing)}, not importable here (carry the wheel)", flush=True)
            continue
        for mode in modes:
            if stored_rounds(results, mode, row) >= args.rounds:
                print(f"skip {mode} {row}: stored with >= {args.rounds} rounds", flush=True)
                continue
            left, expected = args.budget_s - (time.time() - start), max(seen, default=EXPECTED_S)
            if left < expected:
                print(f"stop: {left:.0f} s left, a row takes about {expected:.0f} s", flush=True)
                return 0
            cmd = command(mode, row, args.rounds, results)
            print("+ " + " ".join(cmd), flush=True)
            if args.dry_run:
                continue
            t0 = time.time()
            try:
                rc = subprocess.run(cmd, timeout=left, check=False).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout (rows finished before it are stored)"
            seen.append(time.time() - t0)
            print(f"{mode} {row}: exit {rc} in {seen[-1]:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
