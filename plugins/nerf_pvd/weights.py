"""Shipped weights: a hash-grid teacher trained on the default generated scene and a TensoRF-VM student
distilled from it by PVD, the command that makes them, and their card (numbers written by that command).

    python -m lowrank_vision.plugins.nerf_pvd.weights [--teacher-steps N] [--distill-steps N] [--out DIR]

The scene is regenerated from its seed (so the data are exactly the default scene); the teacher is
trained on the train split; the student sees only the teacher (random poses); both are scored on
the test split, which neither run saw.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from lowrank_vision.core.files import atomic_dir, write_json, write_text

__all__ = ["WEIGHTS_DIR", "shipped_checkpoint", "make_weights"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
_FILES = {"teacher": "teacher_hash.safetensors", "student": "student_tensorf_vm.safetensors"}


def shipped_checkpoint(role: str = "teacher") -> Path:
    """Path of the shipped ``teacher`` (hash grid) or ``student`` (TensoRF VM) checkpoint."""
    if role not in _FILES:
        raise ValueError(f"role must be one of {sorted(_FILES)}, got {role!r}")
    path = WEIGHTS_DIR / _FILES[role]
    if not path.is_file():
        raise FileNotFoundError(f"shipped {role} weights {path} are missing; make them with "
                                "`python -m lowrank_vision.plugins.nerf_pvd.weights`")
    return path


def make_weights(out_dir: Path = WEIGHTS_DIR, teacher_steps: int = 800, distill_steps: int = 500, device: str = "cpu",
                 seed: int = 0) -> dict:
    """Train the teacher, distil the student, score both on the test split, write checkpoints + card (atomically)."""
    import time

    from lowrank_vision.datasets.nerf import SceneConfig, make_scene, read_transforms

    from .config import cpu_distill_config, cpu_fit_config
    from .model import save_field
    from .recipes import distill, evaluate, fit_images

    command = (f"python -m lowrank_vision.plugins.nerf_pvd.weights --teacher-steps {teacher_steps} "
               f"--distill-steps {distill_steps} --device {device} --seed {seed}")
    with tempfile.TemporaryDirectory() as tmp:
        scene_cfg = SceneConfig()
        make_scene(Path(tmp) / "scene", scene_cfg)
        train, test = (read_transforms(Path(tmp) / "scene", s) for s in ("train", "test"))
    fit_cfg = cpu_fit_config("hash", steps=teacher_steps, seed=seed)
    fit_cfg = replace(fit_cfg, train=replace(fit_cfg.train, progress=False))
    t0 = time.perf_counter()
    teacher, t_info = fit_images(train, fit_cfg, device)
    t_ev = evaluate(teacher, test, fit_cfg.render)
    d_cfg = cpu_distill_config("tensorf_vm", steps=distill_steps, seed=seed)
    d_cfg = replace(d_cfg, train=replace(d_cfg.train, progress=False))
    student, s_info = distill(teacher, t_info["rig"], d_cfg, device)
    s_ev = evaluate(student, test, d_cfg.render)
    numbers = {
        "data": {"scene": "lowrank_vision.datasets.nerf.procedural default", "scene_config": scene_cfg.__dict__,
                 "teacher_trained_on": "train split (40 views)", "student_trained_on": "teacher only (random poses)",
                 "scored_on": "test split (8 views, seen by neither run)"},
        "teacher": {"field": "hash", "params": t_info["params"], "steps": teacher_steps, "seconds": round(t_info["seconds"], 1),
                    "test_psnr": round(t_ev["psnr"], 3), "test_ssim": round(t_ev["ssim"], 4)},
        "student": {"field": "tensorf_vm", "params": s_info["params"], "steps": distill_steps, "seconds": round(s_info["seconds"], 1),
                    "test_psnr": round(s_ev["psnr"], 3), "test_ssim": round(s_ev["ssim"], 4),
                    "stage_steps": {str(k): v for k, v in s_info["stage_steps"].items()}},
        "command": command, "total_seconds": round(time.perf_counter() - t0, 1), "device": device,
    }
    card = (
        "# nerf_pvd shipped weights\n\n"
        f"Made by `{command}` (this card and `weights.json` are written by that command).\n\n"
        "Data: the default generated scene (`lowrank_vision.datasets.nerf.procedural`, 64 px, 40 train / 8 val / 8 test views).\n"
        "The teacher is trained on the train split; the student is distilled from the teacher with PVD (random poses, "
        "no images); both are scored on the test split.\n\n"
        "| file | field | params | steps | seconds | test PSNR (dB) | test SSIM |\n|---|---|---|---|---|---|---|\n"
        + "".join(f"| {_FILES[r]} | {numbers[r]['field']} | {numbers[r]['params']:,} | {numbers[r]['steps']} | "
                  f"{numbers[r]['seconds']} | {numbers[r]['test_psnr']} | {numbers[r]['test_ssim']} |\n" for r in ("teacher", "student"))
        + f"\nDevice: {device}. Small CPU-sized fields; see docs/results/nerf_pvd.md for the GPU comparison.\n")
    with atomic_dir(out_dir) as tmp:
        save_field(tmp / _FILES["teacher"], teacher, fit_cfg.field, t_info["rig"], {"command": command, **numbers["teacher"]})
        save_field(tmp / _FILES["student"], student, d_cfg.student, t_info["rig"], {"command": command, **numbers["student"]})
        write_json(tmp / "weights.json", numbers)
        write_text(tmp / "README.md", card)
    return numbers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lowrank_vision.plugins.nerf_pvd.weights", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(WEIGHTS_DIR))
    p.add_argument("--teacher-steps", type=int, default=800)
    p.add_argument("--distill-steps", type=int, default=500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    import json

    print(json.dumps(make_weights(Path(a.out), a.teacher_steps, a.distill_steps, a.device, a.seed), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
