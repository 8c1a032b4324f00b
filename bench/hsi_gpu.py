"""HSI results of issue 15 in one resumable job: recipe search on VAL -> every method on two protocols -> report.

    python3 bench/hsi_gpu.py --device cuda --out runs/hsi_gpu --budget-s 280 --reserve-s 200  # GPU slot
    python3 bench/hsi_gpu.py --device cpu --threads 1 --out runs/hsi_cpu --steps 300  # what docs/results/hsi.md shows
    python3 bench/hsi_gpu.py --smoke --device cpu --out /tmp/hsi_smoke                # rehearsal: small scene, 6 steps,
                                                                                     # its report in /tmp/hsi_smoke/docs

Training: the recipes' trainer settings (``config.train_config``), which ask for whole-step CUDA graphs: on a GPU each
network's step is captured once and replayed (``--eager`` turns that off; on a CPU the trainer runs eagerly and says
why). Every network run's ``cuda_graph`` record (captured or not, fallback reason, fused builds) is kept in the stage
JSON, and the report says in one line whether the numbers came from captured steps.

Data: the synthetic default (:func:`lowrank_vision.datasets.hsi.synthetic.make_synthetic_scene`, 145 x 145 x 200,
16 long-tailed classes); no real labelled scene is used anywhere.

Stages (each writes ``<out>/<stage>.json`` at once and is skipped when that file exists):

* ``search``: LoRA LoLA-SpecViT tiny recipes (``--search-steps`` each) on the ``regions`` split, scored on **val
  only** (val OA of the weights selected on val during training). Phase 1, the spectral reduction: 15 or 30 PCA
  components (30: more left to the learned front-end) or 15 MNF components (noise-adjusted PCA). Phase 2, one
  change at a time on top of the best reduction (patch 13, spectral jitter, no label smoothing, rank 16, fixed
  LoRA scale, lr 1e-2, class weights 1/sqrt(pixels)), then all changes that gained >= 0.5 val points together.
  The recipe with the best val OA is chosen; the test split is not looked at.
* ``regions``, ``checkerboard``: ``commands.train`` with SVM-RBF, random forest, HybridSN, full and LoRA
  LoLA-SpecViT on that split (the networks with the chosen data / augmentation settings; LoRA with the chosen
  LoRA settings), metrics JSON and class-map PNGs copied to ``docs/results/hsi/``.
* ``finetune``: full training of the chosen network on a source scene (seed 1, another sensor: ``domain_shift=1``),
  then LoRA vs full fine-tuning on the default's ``regions`` split (``commands.finetune``; the source PCA kept).
* ``report``: ``docs/results/hsi.md`` from the JSON (tables, per-class accuracies, class maps, the
  acceptance check as measured).

``--budget-s``: a stage that would start after the budget is spent is skipped and the report says so; the search
stops early when less than ``--reserve-s`` is left (kept for the later stages).
"""

from __future__ import annotations

import time

_T0 = time.time()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "results"
STAGES = ("search", "regions", "finetune", "checkerboard", "report")
NETWORKS = ("hybridsn", "full", "lora")
LABELS = {"svm_reduced": "SVM-RBF on the networks' reduced input (diagnostic)", "svm": "SVM-RBF (standardised spectra)", "rf": "random forest (spectra)", "hybridsn": "HybridSN-like CNN",
          "full": "LoLA-SpecViT tiny, full training", "lora": "LoLA-SpecViT tiny, LoRA (frozen base)"}

REDUCTIONS = {  # phase 1: the spectral reduction (name -> DataConfig changes)
    "pca15": {"reduction": "pca"},
    "pca30": {"reduction": "pca", "pca_components": 30},
    "mnf15": {"reduction": "mnf"},
}
CANDIDATES = {  # phase 2, on top of the chosen reduction: name -> (DataConfig changes, RecipeConfig changes, lr or None)
    "patch13": ({"patch": 13}, {}, None),
    "jitter0.1": ({}, {"spectral_jitter": 0.1}, None),
    "no_smoothing": ({}, {"label_smoothing": 0.0}, None),
    "rank16": ({}, {"rank": 16, "alpha": 32.0}, None),
    "fixed_scale": ({}, {"cyclical": False}, None),
    "lr1e-2": ({}, {}, 1e-2),
    "balanced": ({}, {"class_weighting": "sqrt_inverse"}, None),
    "f_min0.2": ({}, {"f_min": 0.2}, None),  # f_min and the target set were once picked on test blocks: re-checked on val
    "no_frontend_lora": ({}, {"targets": ("*.attn.qkv", "*.attn.proj", "*.mlp.fc1", "*.mlp.fc2")}, None),
}
SHARED = ("spectral_jitter", "label_smoothing", "class_weighting")
"""Choices that apply to every network (data and loss), not only to LoRA."""
SOURCE_SCENE = dict(seed=1, domain_shift=1.0)
"""The pre-training scene of the ``finetune`` stage: another layout of the classes, seen by another sensor."""
SMOKE = dict(height=40, width=40, bands=24, num_classes=5, cells=14)


def _left(args) -> float:
    return args.budget_s - (time.time() - _T0)


@functools.lru_cache(maxsize=2)
def _make_scene(smoke: bool, **kw):
    from lowrank_vision.datasets.hsi.synthetic import make_synthetic_scene

    return make_synthetic_scene(**(SMOKE if smoke else {}), **kw)


def _scene(args, **kw):
    return _make_scene(args.smoke, **kw)


def _configs(args, data_changes: dict, recipe_changes: dict, lr, method: str = "lora", split: str = "regions",
             steps: int | None = None):
    from lowrank_vision.plugins.hsi_specvit.config import DataConfig, RecipeConfig, train_config

    data = DataConfig(**{"split": split, "block": 29 if split == "checkerboard" else 16, **data_changes})
    keep = {k: v for k, v in recipe_changes.items() if method == "lora" or k in SHARED}
    steps = steps or args.steps
    train = dataclasses.replace(train_config(method, steps=steps, lr=lr if method == "lora" else None, progress=False),
                                cuda_graph=not args.eager)
    recipe = RecipeConfig(method=method, batch_size=16 if args.smoke else 64, eval_every=max(steps // 12, 1), train=train, **keep)
    return data, recipe


def _all_candidates_in(search: dict) -> bool:
    """Whether a search.json written before searches recorded ``complete`` holds every phase-2 candidate."""
    return all(any(name.endswith("+" + c) for name in search["runs"]) for c in CANDIDATES)


def stage_search(args, previous: dict | None = None) -> dict:
    """The recipe search; ``previous`` (an incomplete search.json of the same steps and device) lends the candidates it
    already measured, so a search cut short by the budget carries on in the next job."""
    from lowrank_vision.plugins.hsi_specvit import recipes

    cube = _scene(args)
    runs, prepared = {}, {}
    reuse = (previous or {}).get("runs", {}) if (previous or {}).get("steps") == args.search_steps \
        and (previous or {}).get("device") == args.device else {}

    def run(name, data_changes, recipe_changes, lr):
        if name in reuse:
            runs[name] = {**reuse[name], "from_earlier_job": True}
            print(f"search {name}: val OA {runs[name]['val_OA']:.2f} (measured in an earlier job)", flush=True)
            return
        data_cfg, recipe = _configs(args, data_changes, recipe_changes, lr, steps=args.search_steps)
        key = json.dumps(dataclasses.asdict(data_cfg), sort_keys=True)
        if key not in prepared:
            prepared[key] = recipes.prepare(cube, data_cfg)
        t = time.time()
        _, rec = recipes.train(recipe, prepared[key], device=args.device)
        runs[name] = {"data": data_changes, "recipe": recipe_changes, "lr": lr, "val_OA": round(rec["val"]["OA"], 2),
                      "val_AA": round(rec["val"]["AA"], 2), "selected_step": rec["selected_step"],
                      "val_curve": rec["val_curve"], "seconds": round(time.time() - t, 1), "cuda_graph": rec["cuda_graph"]}
        print(f"search {name}: val OA {runs[name]['val_OA']:.2f} (step {rec['selected_step']}, {runs[name]['seconds']} s)",
              flush=True)

    for name, d in REDUCTIONS.items():
        run(name, d, {}, None)
    base = max(runs, key=lambda n: runs[n]["val_OA"])
    base_data = REDUCTIONS[base]
    complete = True
    for name, (d, r, lr) in CANDIDATES.items():
        if args.candidates is not None and name not in args.candidates:
            continue
        if _left(args) < args.reserve_s and f"{base}+{name}" not in reuse:
            print(f"search: budget spent, {name} and later candidates not run", flush=True)
            complete = False
            break
        run(f"{base}+{name}", {**base_data, **d}, r, lr)
    gains = [n for n in CANDIDATES if f"{base}+{n}" in runs and runs[f"{base}+{n}"]["val_OA"] >= runs[base]["val_OA"] + 0.5]
    if len(gains) > 1 and complete and _left(args) < args.reserve_s and f"{base}+" + "+".join(gains) not in reuse:
        complete = False
    elif len(gains) > 1 and complete:
        d = {**base_data, **{k: v for n in gains for k, v in CANDIDATES[n][0].items()}}
        r = {k: v for n in gains for k, v in CANDIDATES[n][1].items()}
        lr = next((CANDIDATES[n][2] for n in gains if CANDIDATES[n][2] is not None), None)
        run(f"{base}+" + "+".join(gains), d, r, lr)
    chosen = max(runs, key=lambda n: runs[n]["val_OA"])
    return {"scene": cube.source, "steps": args.search_steps, "device": args.device, "runs": runs, "gains": gains,
            "complete": complete, "chosen": chosen, "chosen_config": {"data": runs[chosen]["data"], "recipe": runs[chosen]["recipe"],
                                                "lr": runs[chosen]["lr"]}}


def stage_protocol(args, protocol: str, search: dict) -> dict:
    from lowrank_vision.plugins.hsi_specvit import commands

    chosen = search["chosen_config"]
    cube = _scene(args)
    runs = [_configs(args, chosen["data"], chosen["recipe"], chosen["lr"], m, protocol)[1] for m in ("svm", "rf", *NETWORKS)]
    data_cfg = _configs(args, chosen["data"], chosen["recipe"], chosen["lr"], "lora", protocol)[0]
    out = Path(args.out) / protocol
    t = time.time()
    result = commands.train(out, cube, runs, data_cfg, device=args.device,
                            command=f"bench/hsi_gpu.py stage {protocol} (commands.train)")
    for rec in result["runs"].values():
        rec.pop("history", None)
    raw = args.docs / "hsi"
    raw.mkdir(parents=True, exist_ok=True)
    from lowrank_vision.plugins.hsi_specvit import recipes
    from lowrank_vision.plugins.hsi_specvit.baselines import fit_classic

    _, _, diag = fit_classic("svm", recipes.prepare(cube, data_cfg), reduced=True)  # what the reduction alone gives
    diag.pop("class_map")
    result["runs"]["svm_reduced"] = diag
    result["rows"].append(recipes.summary_row("svm_reduced", diag))
    for png in out.glob("*_classmap.png"):
        shutil.copyfile(png, raw / f"{protocol}_{png.name}")  # a finished PNG copied beside the report
    return {"protocol": protocol, "data": dataclasses.asdict(data_cfg), "seconds": round(time.time() - t, 1), **result}


def stage_finetune(args, search: dict) -> dict:
    """Pre-train full on the source scene (val-selected), then LoRA vs full fine-tuning on the default's regions split."""
    from lowrank_vision.plugins.hsi_specvit import commands, recipes
    from lowrank_vision.plugins.hsi_specvit.weights import save_bundle

    chosen = search["chosen_config"]
    data_cfg, full = _configs(args, chosen["data"], chosen["recipe"], chosen["lr"], "full")
    source = _scene(args, **SOURCE_SCENE)
    src_data = recipes.prepare(source, dataclasses.replace(data_cfg, fractions=(0.8, 0.2, 0.0)))
    t = time.time()
    model, rec = recipes.train(full, src_data, device=args.device)
    bundle = save_bundle(Path(args.out) / "finetune" / "source_full.safetensors", model, src_data.pca,
                         {"arch": rec["arch"], "model_cfg": rec["model_cfg"], "recipe": rec["recipe"], "patch": data_cfg.patch,
                          "data": dataclasses.asdict(data_cfg), "class_names": source.class_names, "source": source.source})
    source_record = {"scene": source.source, "val_OA": rec["val"]["OA"], "selected_step": rec["selected_step"],
                     "seconds": round(time.time() - t, 1), "cuda_graph": rec["cuda_graph"]}
    runs = [_configs(args, chosen["data"], chosen["recipe"], chosen["lr"], m)[1] for m in ("lora", "full")]
    result = commands.finetune(Path(args.out) / "finetune", _scene(args), bundle, runs, data_cfg, device=args.device)
    for r in result["runs"].values():
        r.pop("history", None)
    return {"source_training": source_record, "data": dataclasses.asdict(data_cfg), **result}


def graph_records(done: dict) -> dict:
    """``{"stage/run": cuda_graph record or None}`` of every network run in the stages' JSON (``None``: not recorded, e.g.
    a stage written before the bench kept the record)."""
    records = {f"search/{n}": r.get("cuda_graph") for n, r in (done.get("search") or {}).get("runs", {}).items()}
    for stage in ("regions", "checkerboard", "finetune"):
        res = done.get(stage) or {}
        records |= {f"{stage}/{n}": r.get("cuda_graph") for n, r in res.get("runs", {}).items() if n in NETWORKS or n.endswith("_finetune")}
    if done.get("finetune"):
        records["finetune/source_full"] = done["finetune"]["source_training"].get("cuda_graph")
    return records


def graph_line(records: dict) -> str:
    """One report line: in how many runs the whole training step was a captured CUDA graph, and why not elsewhere."""
    from lowrank_vision.core.train import describe_graph_records

    return describe_graph_records(records)


def _table(result: dict) -> list[str]:
    rows = {r["run"]: r for r in result["rows"]}
    full = rows.get("full", {}).get("trainable_params")
    lines = ["| method | OA | AA | κ | trainable params | vs full | train time (s) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for m in ("svm", "rf", *NETWORKS, "svm_reduced"):
        if m in rows:
            r = rows[m]
            vs = f"{100 * (1 - r['trainable_params'] / full):.1f} % fewer" if full and m in ("lora", "hybridsn") else ""
            lines.append(f"| {LABELS[m]} | {r['OA']:.2f} | {r['AA']:.2f} | {r['kappa']:.2f} | {r['trainable_params']:,}"
                         f"{' *' if m in ('svm', 'rf', 'svm_reduced') else ''} | {vs} | {r['train_seconds']} |")
    return lines


def _per_class(result: dict) -> list[str]:
    methods = [m for m in ("svm", "rf", *NETWORKS, "svm_reduced") if m in result["runs"]]
    support = result["runs"][methods[0]]["test"]["support"]
    train = result["split"]["train"]
    lines = ["| class | train px | test px | " + " | ".join(methods) + " |", "|---|---:|---:|" + "---:|" * len(methods)]
    for c, n in enumerate(support):
        cells = []
        for m in methods:
            v = result["runs"][m]["test"]["per_class"][c]
            cells.append("—" if v is None else f"{v:.1f}")
        lines.append(f"| {c + 1} | {train[c]} | {n} | " + " | ".join(cells) + " |")
    return lines


def stage_report(args, done: dict) -> str:
    from lowrank_vision.core.files import write_json, write_text

    search = done.get("search")
    lines = ["# HSI classification: LoLA-SpecViT with LoRA vs classic baselines (issue 15)", "",
             f"*Written by `{' '.join(['python3', 'bench/hsi_gpu.py', *sys.argv[1:]])}` from the JSON it measured "
             f"(device `{args.device}`); raw JSON and class maps in [`hsi/`](hsi/). Do not edit by hand.*", "",
             graph_line(graph_records(done)), "",
             "## Data and protocols", "",
             "* Scene: the synthetic default (`make_synthetic_scene()`, seed 0): 145 × 145 pixels, 200 bands "
             "(400–2500 nm), 16 classes with long-tailed sizes (three of them 20–60-pixel blobs), spectrally similar "
             "class pairs, per-field variability, class-specific crop-row patterns, mixed pixels at field edges, noisy "
             "and absorption bands. No real labelled scene was used for training or tuning.",
             "* `regions` split: class-stratified, spatially disjoint (fields cut by a 16-pixel grid into units that go "
             "whole to train / val / test, 30 / 10 / 60 % of each class's pixels; small fields cut along their axis). "
             "`checkerboard`: 29-pixel cells alternate train / test, val carved out of the train cells.",
             "* Every labelled pixel is a sample; inside its patch the pixels of another split are zeroed, so no training "
             "input contains a val/test pixel. The networks' reduction (PCA or MNF, chosen on val) is fitted on training "
             "pixels only. SVM and RF see the raw spectrum of the pixel (all 200 bands), standardised with training "
             "statistics, hyperparameters chosen on val; the last row of each table is an SVM on the networks' reduced "
             "input, a diagnostic of what the reduction alone gives.", ""]
    if search:
        lines += ["## Recipe search (validation pixels only)", "",
                  f"LoRA LoLA-SpecViT tiny, {search['steps']} steps each, `regions` split; val OA of the weights "
                  "selected on val during training. The test pixels are not used.", "",
                  "| candidate | changes | val OA | val AA | selected step | seconds |", "|---|---|---:|---:|---:|---:|"]
        for n, r in search["runs"].items():
            ch = {**r["data"], **r["recipe"], **({"lr": r["lr"]} if r["lr"] else {})}
            lines.append(f"| {n}{' **(chosen)**' if n == search['chosen'] else ''} | `{json.dumps(ch) if ch else '—'}` | "
                         f"{r['val_OA']:.2f} | {r['val_AA']:.2f} | {r['selected_step']} | {r['seconds']} |")
        if not any("+" in n for n in search["runs"]):
            lines += ["", "Phase 2 (one change at a time on top of the best reduction) was not run: the budget was spent "
                      "(`--reserve-s`)."]
        elif search.get("complete") is False:
            lines += ["", "Phase 2 was cut short by the budget (`--reserve-s`): the candidates missing from the table were not "
                      "tried; the next job carries on from `search.json`."]
        if any(r.get("from_earlier_job") for r in search["runs"].values()):
            lines += ["", "Rows measured in an earlier job of the same command (same steps and device) were carried over."]
        lines += [""]
    for protocol in ("regions", "checkerboard"):
        res = done.get(protocol)
        if res is None:
            lines += [f"## `{protocol}` split", "", "Not run (budget spent before this stage).", ""]
            continue
        s = res["split"]
        lines += [f"## `{protocol}` split", "",
                  f"Train / val / test pixels: {sum(s['train']):,} / {sum(s['val']):,} / {sum(s['test']):,}; labelled "
                  f"pixels used: {100 * s['labelled_used_fraction']:.1f} %; classes left out: "
                  f"{', '.join(s['excluded']) or 'none'}{'; ' + '; '.join(s['notes']) if s['notes'] else ''}.", "",
                  *_table(res), "",
                  "\\* SVM: support vectors × bands + dual coefficients; RF: tree nodes (model size, not weights).", "",
                  "Per-class test accuracy (%):", "", *_per_class(res), ""]
        lines += [f"![{m} class map, {protocol}](hsi/{protocol}_{m}_classmap.png)" for m in ("svm", "lora", "full")
                  if (args.docs / "hsi" / f"{protocol}_{m}_classmap.png").exists()]
        lines += [""]
    ft = done.get("finetune")
    if not ft:
        lines += ["## Fine-tuning a pre-trained model to the default scene", "", "Not run (budget spent before this stage).", ""]
    else:
        src = ft["source_training"]
        lines += ["## Fine-tuning a pre-trained model to the default scene (`regions` split)", "",
                  f"Source: full training on `{src['scene']}` (another layout of the same classes seen by another sensor; "
                  f"80 / 20 % train / val, val OA {src['val_OA']:.2f}, {src['seconds']} s). Target: the default scene's "
                  "`regions` split above (same train / val / test pixels; the source PCA is kept).", "",
                  "| run | OA | AA | κ | trainable params | total | time (s) |", "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['run']} | {r['OA']:.2f} | {r['AA']:.2f} | {r['kappa']:.2f} | {r['trainable_params']:,} | "
                  f"{r['total_params']:,} | {r['train_seconds']} |" for r in ft["rows"]]
        lines += [""]
    reg = done.get("regions")
    if reg:
        rows = {r["run"]: r for r in reg["rows"]}
        if {"lora", "svm", "full"} <= set(rows):
            gap = rows["lora"]["OA"] - rows["svm"]["OA"]
            fewer = 100 * (1 - rows["lora"]["trainable_params"] / rows["full"]["trainable_params"])
            ok = gap >= 5 and fewer >= 80
            lines += ["## Acceptance, as measured", "",
                      f"On the `regions` (spatially disjoint) split of the synthetic default: LoRA OA "
                      f"{rows['lora']['OA']:.2f} vs SVM-RBF {rows['svm']['OA']:.2f} (**{gap:+.2f}** points; needed ≥ +5) "
                      f"with {rows['lora']['trainable_params']:,} trainable parameters vs {rows['full']['trainable_params']:,} "
                      f"for full training (**{fewer:.1f} %** fewer; needed ≥ 80 %): **{'met' if ok else 'not met'}**.", ""]
    if ft and reg:
        rows = {r["run"]: r for r in ft["rows"]}
        svm = {r["run"]: r for r in reg["rows"]}.get("svm")
        if svm and {"lora_finetune", "full_finetune"} <= set(rows):
            gap = rows["lora_finetune"]["OA"] - svm["OA"]
            fewer = 100 * (1 - rows["lora_finetune"]["trainable_params"] / rows["full_finetune"]["trainable_params"])
            lines += [f"Fine-tuning route: LoRA fine-tuning OA {rows['lora_finetune']['OA']:.2f} vs SVM-RBF {svm['OA']:.2f} "
                      f"on the same test pixels (**{gap:+.2f}** points) with **{fewer:.1f} %** fewer trainable parameters "
                      f"than full fine-tuning: **{'met' if gap >= 5 and fewer >= 80 else 'not met'}**.", ""]
    text = "\n".join(lines)
    write_text(args.docs / "hsi.md", text)
    write_json(args.docs / "hsi" / "results.json", done)
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="runs/hsi_gpu")
    ap.add_argument("--budget-s", type=float, default=1e9)
    ap.add_argument("--reserve-s", type=float, default=0.0, help="stop the search when less than this is left")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per network (default 300; 1000 on cuda)")
    ap.add_argument("--search-steps", type=int, default=None, help="steps of each search run (default: half of --steps)")
    ap.add_argument("--candidates", nargs="*", choices=list(CANDIDATES), help="phase-2 candidates to try (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="a 40x40x24 scene and 6 steps: checks the script, not the method")
    ap.add_argument("--eager", action="store_true", help="no whole-step CUDA graphs (the recipes ask for them on a GPU)")
    ap.add_argument("--only", nargs="+", choices=STAGES, default=list(STAGES))
    args = ap.parse_args(argv)
    import torch

    from lowrank_vision.core.files import write_json

    torch.set_num_threads(args.threads)
    args.steps = args.steps or (6 if args.smoke else 1000 if args.device.startswith("cuda") else 300)
    args.search_steps = args.search_steps or max(args.steps // 2, 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.docs = out / "docs" if args.smoke else DOCS  # a rehearsal never touches docs/results
    done, earlier_choice = {}, None
    for stage in STAGES:
        path = out / f"{stage}.json"
        if stage == "report":
            stage_report(args, done)
            break
        previous = None  # an incomplete search to carry on
        if path.exists():
            found = json.loads(path.read_text())
            stale = False
            if stage == "search":
                earlier_choice = found["chosen"]  # later stages of an earlier job were made with this recipe
                if (found.get("complete", _all_candidates_in(found)) is False and stage in args.only
                        and _left(args) > args.reserve_s):
                    previous = found
                    print(f"search: carrying on from {path}", flush=True)
            elif found.get("chosen", earlier_choice) != done.get("search", {}).get("chosen"):
                stale = True
                print(f"{stage}: {path} was made with recipe {found.get('chosen', earlier_choice)}, not the chosen one: run again",
                      flush=True)
            if previous is None and not stale:
                done[stage] = found
                print(f"{stage}: {path} exists, skipped", flush=True)
                continue
        if stage not in args.only or _left(args) <= 0 or (stage != "search" and "search" not in done):
            print(f"{stage}: not run", flush=True)
            continue
        t = time.time()
        if stage == "search":
            done[stage] = stage_search(args, previous)
        elif stage == "finetune":
            done[stage] = {**stage_finetune(args, done["search"]), "chosen": done["search"]["chosen"]}
        else:
            done[stage] = {**stage_protocol(args, stage, done["search"]), "chosen": done["search"]["chosen"]}
        write_json(path, done[stage])
        write_json(args.docs / "hsi" / f"{stage}.json", done[stage])
        stage_report(args, done)  # after every stage: a run cut short still leaves a report of what it reached
        print(f"{stage}: done in {time.time() - t:.0f} s ({_left(args):.0f} s of budget left)", flush=True)


if __name__ == "__main__":
    main()
