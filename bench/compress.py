"""Numbers of docs/compression.md: low-rank compression (WeLore budgets, Tucker/CP, PELA), Maestro ranks, MarkBoard.

    python bench/compress.py [--out docs/results/compression] [--doc docs/compression.md] [--only STAGE ...]

CPU, one thread, about a minute of compute. Writes the raw numbers to ``<out>/results.json``, a
figure to ``<out>/compression.png`` and rewrites the block between the ``bench/compress.py``
markers of ``--doc`` from that JSON. Every model is trained here from fixed seeds on synthetic data
(the same recipes as tests/core/toy_tasks.py, which the factorize and watermark tests use; bench does not import
tests, so tests/core/test_toy_tasks.py checks that the two copies draw the same data and train the same weights).
``--only`` reruns the named stages and keeps the others from the existing ``results.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lowrank_vision.core import AdapterLayer, count_parameters, factorize, watermark
from lowrank_vision.core.files import save_figure, write_json, write_text

START, END = "<!-- bench/compress.py: start -->", "<!-- bench/compress.py: end -->"


# -- tasks (as in the tests) -----------------------------------------------------------------------
def image_task(n_train=2048, n_test=1024, classes=10, size=12, noise=1.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    templates = F.interpolate(torch.randn(classes, 1, 4, 4, generator=g), size=(size, size), mode="bilinear", align_corners=False)
    templates = templates / templates.flatten(1).std(1).view(-1, 1, 1, 1)

    def draw(n):
        y = torch.randint(0, classes, (n,), generator=g)
        shifts = torch.randint(-2, 3, (n, 2), generator=g).tolist()
        x = torch.stack([torch.roll(templates[c], tuple(s), (1, 2)) for c, s in zip(y.tolist(), shifts)])
        return x * (0.5 + torch.rand(n, 1, 1, 1, generator=g)) + noise * torch.randn(x.shape, generator=g), y

    return draw(n_train), draw(n_test)


def vector_task(seed=0, d=24, classes=8):
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(d, 32, generator=g) / d ** 0.5, torch.randn(32, classes, generator=g) / 32 ** 0.5

    def draw(n):
        x = torch.randn(n, d, generator=g)
        return x, (torch.tanh(x @ w1) @ w2).argmax(1)

    return draw(4096), draw(2048)


class SmallCNN(nn.Module):
    def __init__(self, classes=10, width=24):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.fc1 = nn.Linear(2 * width, 64)
        self.fc2 = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x))))))
        return self.fc2(F.relu(self.fc1(x.mean((2, 3)))))


def train(model, x, y, steps, before_step=None, penalty=0.0):
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        if before_step is not None:
            before_step()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if penalty:
            loss = loss + penalty * factorize.group_lasso_penalty(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def n_params(model) -> int:
    return count_parameters(model)[1]


# -- stages ----------------------------------------------------------------------------------------
def uniform_ranks(model, fraction_of_params: float) -> dict[str, int]:
    """The same share of every layer's full rank, the largest share that fits the parameter budget (the baseline to WeLore)."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    total = n_params(model)

    def ranks_at(share):
        out = {}
        for name, m in layers.items():
            o, i = m.weight.shape[0], m.weight[0].numel()
            r = max(1, math.ceil(share * min(o, i)))
            if r * (o + i) < o * i:
                out[name] = r
        return out

    def count(ranks):
        return total - sum(layers[n].weight.numel() - r * (layers[n].weight.shape[0] + layers[n].weight[0].numel()) for n, r in ranks.items())

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count(ranks_at(mid)) <= fraction_of_params * total else (lo, mid)
    return ranks_at(lo)


def stage_compression() -> dict:
    (x, y), (xt, yt) = image_task()
    torch.manual_seed(0)
    model = train(SmallCNN(), x, y, steps=250)
    base = accuracy(model, xt, yt)
    unlabelled = [x[i:i + 64] for i in range(0, 1024, 64)]
    rows = []
    for budget in (0.7, 0.5, 0.3, 0.2):
        for fmt in ("matrix", "tucker", "cp"):
            small = copy.deepcopy(model)
            start = time.perf_counter()
            report = factorize.compress(small, budget=budget, conv_format=fmt, cp_iterations=50)
            seconds = time.perf_counter() - start
            row = {"budget": budget, "format": fmt, "fraction": report.fraction, "accuracy": accuracy(small, xt, yt),
                   "seconds": seconds, "ranks": {r.name: r.rank for r in report.layers}, "errors": {r.name: r.relative_error for r in report.layers}}
            if fmt == "matrix":
                held = copy.deepcopy(small)
                result = factorize.distill(small, model, unlabelled, steps=100, lr=1e-3)
                row.update(distilled=accuracy(small, xt, yt), distill_loss=[result.loss_before, result.loss_after],
                           weight_error=list(result.weight_error))
                regularised = factorize.distill(held, model, unlabelled, steps=100, lr=1e-3, weight_regularization=1.0)
                row.update(distilled_wpr=accuracy(held, xt, yt), weight_error_wpr=list(regularised.weight_error))
                uniform = copy.deepcopy(model)
                uniform_report = factorize.compress(uniform, ranks=uniform_ranks(model, budget))
                row.update(uniform_fraction=uniform_report.fraction, uniform_accuracy=accuracy(uniform, xt, yt),
                           uniform_ranks={r.name: r.rank for r in uniform_report.layers})
            rows.append(row)
    error_rows = []
    for max_error in (0.2, 0.4):
        small = copy.deepcopy(model)
        report = factorize.compress(small, budget=factorize.ErrorBudget(max_error))
        error_rows.append({"max_error": max_error, "fraction": report.fraction, "accuracy": accuracy(small, xt, yt),
                           "ranks": {r.name: r.rank for r in report.layers}})
    half = copy.deepcopy(model)
    table = str(factorize.compress(half, budget=0.5))
    return {"task": "10-class 12x12 synthetic images (2048 train / 1024 test), SmallCNN trained 250 Adam steps",
            "params": n_params(model), "base_accuracy": base, "budgets": rows, "error_budgets": error_rows, "report_at_half": table}


def stage_maestro() -> dict:
    (x, y), (xt, yt) = vector_task()

    def mlp():
        return nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))

    torch.manual_seed(0)
    init = mlp()
    dense = train(copy.deepcopy(init), x, y, steps=600)
    plain = copy.deepcopy(init)
    factorize.factorize_full_rank(plain, exclude="4")
    train(plain, x, y, steps=600)
    ordered = copy.deepcopy(init)
    factorize.factorize_full_rank(ordered, exclude="4")
    dropout = factorize.OrderedRankDropout(ordered, seed=0)
    train(ordered, x, y, steps=600, before_step=dropout.sample)
    dropout.reset()
    rows = []
    for fraction in (1.0, 0.5, 0.25, 0.125):
        cut = {}
        for name, source in (("ordered", ordered), ("plain", plain), ("dense_svd", dense)):
            m = copy.deepcopy(source)
            if name == "dense_svd":
                factorize.factorize_full_rank(m, exclude="4")
            ranks = factorize.truncate(m, fraction)
            cut[name] = accuracy(m, xt, yt)
        rows.append({"fraction": fraction, "ranks": ranks, **cut})
    return {"task": "8-class labels of a random tanh network on 24-d Gaussian inputs (4096 train / 2048 test), MLP 24-64-64-8, 600 Adam steps",
            "dense_accuracy": accuracy(dense, xt, yt), "truncation": rows}


def stage_group_lasso(threshold: float = 0.03, tolerance: float = 0.01) -> dict:
    """Maestro's group lasso: the weight is the largest on the grid whose cut model stays within ``tolerance`` of the
    unpenalised one on a validation split (train[3072:]); then test accuracy at the ranks it learned."""
    (x, y), (xt, yt) = vector_task()
    (xf, yf), (xv, yv) = (x[:3072], y[:3072]), (x[3072:], y[3072:])
    torch.manual_seed(0)
    init = nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    factorize.factorize_full_rank(init, exclude="4")
    grid, models = [], {}
    for weight in (0.0, 1e-3, 2e-3, 5e-3, 1e-2):
        models[weight] = train(copy.deepcopy(init), xf, yf, steps=600, penalty=weight)
        cut = copy.deepcopy(models[weight])
        ranks = factorize.truncate(cut, threshold=threshold)
        grid.append({"weight": weight, "ranks": ranks, "val_accuracy": accuracy(models[weight], xv, yv), "val_accuracy_cut": accuracy(cut, xv, yv)})
    chosen = max(r["weight"] for r in grid if r["val_accuracy_cut"] >= grid[0]["val_accuracy"] - tolerance)
    ranks = next(r["ranks"] for r in grid if r["weight"] == chosen)
    ordered = copy.deepcopy(init)
    dropout = factorize.OrderedRankDropout(ordered, seed=0)
    train(ordered, xf, yf, steps=600, before_step=dropout.sample)
    dropout.reset()
    test = {}
    for name, source in (("group_lasso", models[chosen]), ("plain", models[0.0]), ("ordered", ordered)):
        cut = copy.deepcopy(source)
        factorize.truncate(cut, ranks)
        test[name] = {"full": accuracy(source, xt, yt), "cut": accuracy(cut, xt, yt)}
    return {"task": "the Maestro task, trained on 3072 of the 4096 training points", "threshold": threshold, "tolerance": tolerance,
            "grid": grid, "chosen_weight": chosen, "ranks": ranks, "test": test}


def stage_markboard(n_signatures: int = 50) -> dict:
    (x, y), (xt, yt) = image_task()
    x, xt = x.flatten(1), xt.flatten(1)
    torch.manual_seed(0)
    base = train(nn.Sequential(nn.Linear(144, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)), x, y, steps=300)
    model = copy.deepcopy(base)
    config = watermark.MarkBoardConfig(n_bits=8, rank=4, steps=400, fidelity_weight=5.0)
    start = time.perf_counter()
    board = watermark.embed(model, x, config)
    embed_seconds = time.perf_counter() - start
    g = torch.Generator().manual_seed(1)
    bits_right = verified = rejected = 0
    clean = []
    swap_seconds = []
    for k in range(n_signatures):
        bits = torch.randint(0, 2, (8,), generator=g).tolist()
        start = time.perf_counter()
        board.set_signature(model, bits)
        swap_seconds.append(time.perf_counter() - start)
        result = board.verify(model, bits)
        bits_right += sum(d == b for d, b in zip(result.decoded, bits))
        verified += result.verified
        wrong = list(bits)
        wrong[k % 8] ^= 1
        rejected += not board.verify(model, wrong).verified
        if k < 10:
            clean.append(accuracy(model, xt, yt))
    board.set_signature(model, None)
    base_decoded, _ = board.read(base)
    shipped = board.distribute(model, bits)
    branch_params = sum(p.numel() for a in {id(m): m for m in model.modules() if isinstance(m, AdapterLayer)}.values() for _, p in a.adapter_parameters())
    return {"task": "the 12x12 image task flattened, MLP 144-128-64-10 trained 300 Adam steps; 8-bit signatures, rank-4 LoRA branches on all 3 Linears",
            "config": {"n_bits": 8, "rank": 4, "steps": 400, "fidelity_weight": 5.0}, "base_accuracy": accuracy(base, xt, yt),
            "signatures": n_signatures, "bit_accuracy": bits_right / (8 * n_signatures), "verified": verified / n_signatures,
            "wrong_rejected": rejected / n_signatures, "base_undecided_bits": sum(d == -1 for d in base_decoded),
            "clean_accuracy_mean": sum(clean) / len(clean), "clean_accuracy_min": min(clean),
            "distributed_verified": board.verify(shipped, bits).verified, "distributed_params": n_params(shipped), "base_params": n_params(base),
            "branch_params_all_16": branch_params, "embed_seconds": embed_seconds, "swap_ms": 1000 * sum(swap_seconds) / len(swap_seconds)}


def stage_markboard_cnn(n_signatures: int = 20) -> dict:
    """The same on the SmallCNN (global average pooling) with patch triggers: how many bits it holds."""
    (x, y), (xt, yt) = image_task()
    torch.manual_seed(0)
    base = train(SmallCNN(), x, y, steps=250)
    rows = []
    for n_bits in (2, 8):
        model = copy.deepcopy(base)
        config = watermark.MarkBoardConfig(n_bits=n_bits, rank=4, steps=400, fidelity_weight=5.0, trigger_kind="patch", trigger_fraction=0.15)
        board = watermark.embed(model, x, config)
        g = torch.Generator().manual_seed(1)
        bits_right = verified = 0
        clean = []
        for k in range(n_signatures):
            bits = torch.randint(0, 2, (n_bits,), generator=g).tolist()
            board.set_signature(model, bits)
            result = board.verify(model, bits)
            bits_right += sum(d == b for d, b in zip(result.decoded, bits))
            verified += result.verified
            if k < 5:
                clean.append(accuracy(model, xt, yt))
        rows.append({"n_bits": n_bits, "bit_accuracy": bits_right / (n_bits * n_signatures), "verified": verified / n_signatures,
                     "clean_accuracy_mean": sum(clean) / len(clean), "final_loss": board.history[-1]})
    return {"task": "the 12x12 image task, SmallCNN trained 250 Adam steps; patch triggers (15 % of the positions), rank-4 branches on all 5 layers, 400 steps",
            "base_accuracy": accuracy(base, xt, yt), "signatures": n_signatures, "rows": rows}


def reference_layers(rank: int = 8) -> dict:
    """Parameters of the compressed forms of two reference layers (closed form, checked on the modules)."""
    out = {}
    for name, layer in (("Linear(768, 768)", nn.Linear(768, 768)), ("Conv2d(64, 64, 3x3)", nn.Conv2d(64, 64, 3, padding=1))):
        row = {"dense": n_params(layer)}
        for fmt in ("matrix", "tucker", "cp") if isinstance(layer, nn.Conv2d) else ("matrix",):
            m = nn.Sequential(copy.deepcopy(layer))
            factorize.compress(m, ranks=rank, conv_format=fmt, cp_iterations=5)
            row[fmt] = n_params(m)
        out[name] = row
    return {"rank": rank, "layers": out}


# -- report ----------------------------------------------------------------------------------------
def render(results: dict) -> str:
    c, m, w, ref = results["compression"], results["maestro"], results["markboard"], results["reference"]
    lines = [START, "", "Written by `python bench/compress.py` (CPU, one thread); raw numbers in "
             "[results/compression/results.json](results/compression/results.json).", "",
             "![accuracy against parameters kept, and against the share of rank kept](results/compression/compression.png)", ""]
    lines += [f"**Compression** ({c['task']}; {c['params']:,} parameters, test accuracy {c['base_accuracy']:.3f}).", "",
              "| kept params (budget) | format | kept (measured) | test acc | + PELA distillation | + PELA with weight regularisation 1.0 | uniform ranks, same budget |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    for r in c["budgets"]:
        pela = f"{r['distilled']:.3f}" if "distilled" in r else ""
        wpr = f"{r['distilled_wpr']:.3f}" if "distilled_wpr" in r else ""
        uniform = f"{r['uniform_accuracy']:.3f} ({r['uniform_fraction']:.2f})" if "uniform_accuracy" in r else ""
        lines.append(f"| {r['budget']:.2f} | {r['format']} | {r['fraction']:.3f} | {r['accuracy']:.3f} | {pela} | {wpr} | {uniform} |")
    at = {(r["budget"], r["format"]): r for r in c["budgets"]}
    half, third = at[(0.5, "matrix")], at[(0.3, "matrix")]
    lines += ["", f"At half the parameters the WeLore ranks lose {100 * (c['base_accuracy'] - half['accuracy']):.1f} points "
              f"(a uniform share of every layer's rank at the same budget loses {100 * (c['base_accuracy'] - half['uniform_accuracy']):.1f}); "
              f"at 0.3 of the parameters PELA distillation (100 steps on 1,024 unlabelled inputs) wins back "
              f"{100 * (third['distilled'] - third['accuracy']):.1f} of the {100 * (c['base_accuracy'] - third['accuracy']):.1f} points lost. "
              f"There the mean relative weight error of the factorised layers goes from {third['weight_error'][0]:.3f} (the SVD cut) to "
              f"{third['weight_error'][1]:.3f} with plain distillation and to {third['weight_error_wpr'][1]:.3f} with the weight regularisation "
              f"(the SVD cut is already the closest rank-r weight, so the term can only hold the factors near it)."]
    lines += ["", "Error budgets (matrix form): " + "; ".join(
        f"max relative error {r['max_error']:g} keeps {r['fraction']:.3f} of the parameters at test accuracy {r['accuracy']:.3f}" for r in c["error_budgets"]) + ".",
        "", "The report of `compress(model, budget=0.5)`:", "", "```", c["report_at_half"], "```", ""]
    lines += [f"**Maestro ordered ranks** ({m['task']}; dense model {m['dense_accuracy']:.3f}). Test accuracy after `truncate(model, fraction)`:", "",
              "| share of each layer's rank kept | ranks | ordered-dropout training | same factorised model, plain training | dense model, SVD cut |",
              "|---:|---|---:|---:|---:|"]
    for r in m["truncation"]:
        lines.append(f"| {r['fraction']:g} | {r['ranks']} | {r['ordered']:.3f} | {r['plain']:.3f} | {r['dense_svd']:.3f} |")
    half_rank = m["truncation"][1]
    svd_wins = all(r["dense_svd"] >= r["ordered"] for r in m["truncation"][1:])
    lines += ["", f"Cutting every rank to half after ordered-dropout training costs {100 * (m['truncation'][0]['ordered'] - half_rank['ordered']):.1f} points, "
              f"after plain training of the same factorised model {100 * (m['truncation'][0]['plain'] - half_rank['plain']):.1f}. An SVD cut of the plain "
              f"dense model is {'as good or better at every cut' if svd_wins else 'worse at some cut'} on this task (Maestro proves that ordered "
              f"dropout recovers the SVD order for linear maps; this MLP is not linear)."]
    gl = results["group_lasso"]
    t = gl["test"]
    lines += ["", f"**Maestro group lasso** ({gl['task']}; `loss + weight * group_lasso_penalty(model)`, then `truncate(model, "
              f"threshold={gl['threshold']:g})`). Weight chosen on a validation split (the last 1024 training points): the largest whose "
              f"cut model stays within {gl['tolerance']:g} of the unpenalised model there.", "",
              "| weight | ranks learned (of 24, 64) | val acc | val acc after the cut |", "|---:|---|---:|---:|"]
    for r in gl["grid"]:
        lines.append(f"| {r['weight']:g} | {r['ranks']} | {r['val_accuracy']:.3f} | {r['val_accuracy_cut']:.3f} |")
    lines += ["", f"Chosen weight {gl['chosen_weight']:g}, ranks {gl['ranks']}. Test accuracy, full rank / cut to those ranks: "
              f"group lasso {t['group_lasso']['full']:.3f} / {t['group_lasso']['cut']:.3f}, plain training {t['plain']['full']:.3f} / "
              f"{t['plain']['cut']:.3f}, ordered dropout {t['ordered']['full']:.3f} / {t['ordered']['cut']:.3f}."]
    lines += ["", f"**Hot-Swap MarkBoard** ({w['task']}).", "",
              "| measure | value |", "|---|---:|",
              f"| signatures tried | {w['signatures']} |",
              f"| bits read correctly | {w['bit_accuracy']:.3f} |",
              f"| right signature verified | {w['verified']:.3f} |",
              f"| one-bit-wrong claim rejected | {w['wrong_rejected']:.3f} |",
              f"| bits of the unmarked base model left undecided (of 8) | {w['base_undecided_bits']} |",
              f"| clean test accuracy: base / marked (mean, min of 10 signatures) | {w['base_accuracy']:.3f} / {w['clean_accuracy_mean']:.3f}, {w['clean_accuracy_min']:.3f} |",
              f"| distributed (merged) copy verified; its parameters vs base | {w['distributed_verified']}; {w['distributed_params']:,} vs {w['base_params']:,} |",
              f"| parameters of all 16 branches (owner side) | {w['branch_params_all_16']:,} |",
              f"| embedding time (400 steps) / one signature swap | {w['embed_seconds']:.1f} s / {w['swap_ms']:.1f} ms |", ""]
    cnn = results["markboard_cnn"]
    lines += [f"On a CNN ({cnn['task']}; base accuracy {cnn['base_accuracy']:.3f}), {cnn['signatures']} signatures each: " + "; ".join(
        f"{r['n_bits']} bits: bits read correctly {r['bit_accuracy']:.3f}, signatures verified {r['verified']:.2f}, clean accuracy {r['clean_accuracy_mean']:.3f}"
        for r in cnn["rows"]) + ".", ""]
    lines += [f"**Reference layers at rank {ref['rank']}** (parameters incl. bias): " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {v:,}" for k, v in row.items()) for name, row in ref["layers"].items()) + ".", "", END]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    rows = [r for r in results["compression"]["budgets"] if r["format"] == "matrix"]
    for fmt, marker in (("matrix", "o"), ("tucker", "s"), ("cp", "^")):
        sel = [r for r in results["compression"]["budgets"] if r["format"] == fmt]
        ax1.plot([r["fraction"] for r in sel], [r["accuracy"] for r in sel], marker=marker, label=f"WeLore ranks, {fmt}")
    ax1.plot([r["fraction"] for r in rows], [r["distilled"] for r in rows], "o--", label="matrix + PELA distillation")
    ax1.plot([r["uniform_fraction"] for r in rows], [r["uniform_accuracy"] for r in rows], "x:", label="uniform rank share")
    ax1.axhline(results["compression"]["base_accuracy"], color="gray", lw=0.8, label="uncompressed")
    ax1.set(xlabel="share of parameters kept", ylabel="test accuracy", title="SmallCNN compression")
    ax1.legend(fontsize=7)
    trunc = results["maestro"]["truncation"]
    for key, label in (("ordered", "ordered dropout"), ("plain", "plain training"), ("dense_svd", "dense + SVD cut")):
        ax2.plot([r["fraction"] for r in trunc], [r[key] for r in trunc], marker="o", label=label)
    ax2.set(xscale="log", xlabel="share of rank kept", ylabel="test accuracy", title="rank truncation after training (MLP)")
    ax2.set_xticks([r["fraction"] for r in trunc], [f"{r['fraction']:g}" for r in trunc])
    ax2.minorticks_off()
    ax2.legend(fontsize=7)
    save_figure(fig, path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results/compression"))
    ap.add_argument("--doc", type=Path, default=Path("docs/compression.md"))
    stages = {"compression": stage_compression, "maestro": stage_maestro, "group_lasso": stage_group_lasso,
              "markboard": stage_markboard, "markboard_cnn": stage_markboard_cnn, "reference": reference_layers}
    ap.add_argument("--only", nargs="+", choices=sorted(stages), help="rerun these stages, keep the rest from <out>/results.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    if args.only:
        previous = json.loads((args.out / "results.json").read_text())
        results = {name: previous[name] for name in stages if name not in args.only}
    for name, stage in stages.items():
        if name in results:
            continue
        start = time.perf_counter()
        results[name] = stage()
        print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
    results = {name: results[name] for name in stages}
    write_json(args.out / "results.json", results)
    plot(results, args.out / "compression.png")
    block = render(results)
    text = args.doc.read_text() if args.doc.exists() else f"# Compression\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        raise SystemExit(f"{args.doc} lacks the markers {START} ... {END}")
    write_text(args.doc, re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S))
    print(block)
    return results


if __name__ == "__main__":
    main()
