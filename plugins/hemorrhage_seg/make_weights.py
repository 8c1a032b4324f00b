"""Make the shipped default weights (``weights/``) and the bundle's ``models/model.pt``.

    python -m lowrank_vision.plugins.hemorrhage_seg.make_weights            # everything (CPU, minutes)
    python -m lowrank_vision.plugins.hemorrhage_seg.make_weights --bundle-only

Steps: ``lowrank-seg pretrain`` recipe with preset ``cpu`` (synthetic TBI) -> ``weights/tbi_unet.pt``;
CP-LoRA rank 8 fine-tuned on every synthetic SAH case of the preset -> ``weights/sah_cp_lora_r8/``;
base + adapter (unmerged) state dict -> ``bundle/models/model.pt``. Metrics go to ``weights/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from . import BUNDLE_DIR
from .inference import DEFAULT_ADAPTER, DEFAULT_BASE, WEIGHTS_DIR, bundle_network


def write_bundle_model(base=DEFAULT_BASE, adapter=DEFAULT_ADAPTER, out=BUNDLE_DIR / "models" / "model.pt") -> Path:
    net = bundle_network(str(base), str(adapter), merge=False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(".tmp_" + out.name)
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, out)
    return out


def main(argv=None) -> int:
    from lowrank_vision.core import save

    from .metrics import summarize_cases
    from .models import load_checkpoint
    from .recipe import PRESETS, evaluate, finetune, load_dataset, make_synthetic_data, pretrain

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle-only", action="store_true", help="only rebuild bundle/models/model.pt from weights/")
    ap.add_argument("--work", default=None, help="scratch folder for the synthetic data (default: a temp folder)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if not args.bundle_only:
        cfg = PRESETS["cpu"]
        work = Path(args.work or tempfile.mkdtemp(prefix="hseg_weights_"))
        m = pretrain(cfg, work / "data", DEFAULT_BASE)
        base, arch, _ = load_checkpoint(DEFAULT_BASE)
        sah = load_dataset(work / "data" / "sah", cfg.windows)
        model, n_train = finetune(base, sah, range(len(sah)), "cp_lora", 8, cfg)
        save(model, DEFAULT_ADAPTER)
        eval_cfg = PRESETS["cpu"].__class__(**{**PRESETS["cpu"].__dict__, "seed": 1})
        held = load_dataset(make_synthetic_data(eval_cfg, work / "heldout")[1], cfg.windows)
        m.update({"cp_lora_r8_trainable_params": n_train,
                  "heldout_sah_seed1_pretrained_only": summarize_cases(evaluate(base, held, arch.divisor)),
                  "heldout_sah_seed1_cp_lora_r8": summarize_cases(evaluate(model, held, arch.divisor))})
        (WEIGHTS_DIR / "metrics.json").write_text(json.dumps(m, indent=1))
        print(json.dumps(m, indent=1))
    print("bundle weights:", write_bundle_model())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
