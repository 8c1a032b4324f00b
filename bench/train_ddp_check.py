"""Check that lowrank_vision.core.train runs data-parallel: same loop, launched on N processes.

GPU (2 H200):  accelerate launch --multi_gpu --num_processes 2 bench/train_ddp_check.py --out runs/ddp_check
               (or: torchrun --nproc_per_node 2 bench/train_ddp_check.py --out runs/ddp_check)
CPU (gloo):    torchrun --nproc_per_node 2 bench/train_ddp_check.py --out runs/ddp_cpu --cpu

It trains a small 3-D conv net (with dropout, shuffled data) for --steps steps, then again with a
checkpoint half-way, a simulated kill (a callback raises) and a resume, and checks that
(1) the world size is what the launcher asked for, (2) all ranks hold bit-identical weights,
(3) the loss went down, (4) interrupted + resumed weights == uninterrupted weights.
Rank 0 writes OUT/ddp_check.json and prints it; exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lowrank_vision.core.files import write_json
from lowrank_vision.core.train import TrainConfig, fit


class BlobVolumes(Dataset):
    """Tiny 3-D volumes with a bright cube; target = cube mask. Item depends only on its index."""

    def __init__(self, n: int = 64, size: int = 16):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(1000 + i)
        s = self.size
        mask = torch.zeros(1, s, s, s)
        c = torch.randint(3, s - 5, (3,), generator=g)
        mask[:, c[0]:c[0] + 4, c[1]:c[1] + 4, c[2]:c[2] + 4] = 1
        img = mask * 1.5 + 0.5 * torch.randn(1, s, s, s, generator=g)
        return img, mask


def make_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(1, 16, 3, padding=1), nn.ReLU(), nn.Dropout3d(0.1), nn.Conv3d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv3d(16, 1, 1))


def loss_fn(model, batch):
    x, y = batch
    return nn.functional.binary_cross_entropy_with_logits(model(x), y)


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten().cpu() for p in model.state_dict().values()])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/ddp_check")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        shutil.rmtree(out, ignore_errors=True)

    def cfg(sub, **kw):
        return TrainConfig(max_steps=args.steps, lr=3e-3, mixed_precision=args.mixed_precision, cpu=args.cpu,
                           output_dir=str(out / sub), log_every=5, **kw)

    def data():
        return DataLoader(BlobVolumes(), batch_size=args.batch_size, shuffle=True)

    straight = fit(make_net(0), data(), loss_fn, cfg("straight"))

    class Stop(Exception):
        pass

    def stop(step, model, metrics):
        if step == args.steps // 2:
            raise Stop

    try:
        fit(make_net(0), data(), loss_fn, cfg("resumed", checkpoint_every=args.steps // 2), callbacks=[stop])
    except Stop:
        pass
    resumed = fit(make_net(1), data(), loss_fn, cfg("resumed", checkpoint_every=args.steps // 2, resume=True))

    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    w = flat(straight.model)
    checksum = torch.tensor([float(w.double().sum()), float((w.double() ** 2).sum())])
    if world > 1:
        dev = next(straight.model.parameters()).device
        gathered = [torch.zeros(2, dtype=torch.float64, device=dev) for _ in range(world)]
        dist.all_gather(gathered, checksum.to(dev, torch.float64))
        sums = [g.cpu().tolist() for g in gathered]
    else:
        sums = [checksum.tolist()]
    hist = straight.history
    report = {
        "world_size": world,
        "expected_world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "device": str(next(straight.model.parameters()).device),
        "mixed_precision": args.mixed_precision,
        "steps": straight.steps,
        "first_logged_loss": hist[0]["loss"],
        "final_loss": straight.final_loss,
        "rank_weight_checksums": sums,
        "ranks_identical": all(s == sums[0] for s in sums),
        "resume_identical": bool(torch.equal(w, flat(resumed.model))),
    }
    report["loss_decreased"] = report["final_loss"] < report["first_logged_loss"]
    ok = report["ranks_identical"] and report["resume_identical"] and report["loss_decreased"] and world == report["expected_world_size"]
    report["ok"] = ok
    if rank == 0:
        write_json(out / "ddp_check.json", report, indent=1)
        print(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
