"""Configuration of the hemorrhage plugin: network, fine-tuning strategies, experiment presets.

Everything here is a frozen dataclass or a constant; a variant is made with ``dataclasses.replace``
(or :func:`from_options`, which the app uses), never by mutation. Importing this module imports
torch (through ``core.train``) but not MONAI.

Learning rates (presets ``cpu`` and ``gpu``): ``train.lr`` is the rate of ``full`` and ``decoder``;
adapters use ``adapter_lr_by_method``, else ``adapter_lr``, else ``train.lr`` (:meth:`SegExperimentConfig.lr_for`).
In preset ``cpu`` the CP adapters (``cp_lora``, ``cp_dora``) train at 1e-1 and everything else at 1e-2.
That rate was chosen on the *selection* data, SAH seeds 1 and 2, never on seed 0, which the results table
reports (docs/results/hemorrhage.md). Preset ``gpu`` carries the adapter rates over unchanged (no tuning at
GPU size) and keeps 2e-3, its pre-training rate, for ``full`` and ``decoder``. Preset ``tiny`` uses one rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Optional, Sequence, get_args

from lowrank_vision.core.train import TrainConfig
from lowrank_vision.core.validate import require
from lowrank_vision.datasets.ct.phantom import HeadCTConfig
from lowrank_vision.datasets.ct.synthetic import SyntheticCTConfig

__all__ = ["UNetConfig", "SegExperimentConfig", "PRESETS", "FINETUNE_STRATEGIES", "ADAPTER_METHODS", "MODULE_GROUPS",
           "FinetuneStrategy", "trainer", "parse_method_lr", "from_options"]

AdapterMethod = Literal["lora_c", "conv_lora", "cp_lora", "dora_c", "conv_dora", "cp_dora"]
FinetuneStrategy = Literal["none", "full", "decoder", "lora_c", "conv_lora", "cp_lora", "dora_c", "conv_dora", "cp_dora"]
ADAPTER_METHODS: tuple[str, ...] = get_args(AdapterMethod)
"""Adapter families of :mod:`lowrank_vision.core` that the seed paper compares."""
FINETUNE_STRATEGIES: tuple[str, ...] = get_args(FinetuneStrategy)
"""``none`` (pre-trained only), ``full`` (every weight), ``decoder`` (up-path only), and the adapters."""
MODULE_GROUPS = ("all", "encoder", "decoder")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the segmentation network (binary output: one logit channel)."""

    kind: Literal["3d", "multiview"] = "3d"
    """``"3d"``: one 3-D UNet; ``"multiview"``: axial/coronal/sagittal 2-D UNets with fused probabilities."""
    in_channels: int = 2
    """Input channels (one per HU window)."""
    channels: tuple[int, ...] = (8, 16, 32, 64)
    """Feature channels per UNet level."""
    strides: tuple[int, ...] = (2, 2, 2)
    """Down-sampling stride between levels (len(channels) - 1 entries)."""
    num_res_units: int = 1
    """Residual units per block (MONAI ``num_res_units``)."""

    def __post_init__(self) -> None:
        if self.kind not in ("3d", "multiview"):
            raise ValueError(f"UNetConfig.kind must be '3d' or 'multiview', got {self.kind!r}")
        if self.in_channels < 1:
            raise ValueError(f"UNetConfig.in_channels must be >= 1, got {self.in_channels!r}")
        if len(self.channels) < 2 or len(self.strides) != len(self.channels) - 1:
            raise ValueError(f"UNetConfig.strides must have len(channels) - 1 = {len(self.channels) - 1} entries, got {self.strides!r}")
        if self.num_res_units < 0:
            raise ValueError(f"UNetConfig.num_res_units must be >= 0, got {self.num_res_units!r}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))

    @property
    def divisor(self) -> int:
        """Spatial sizes must be multiples of this (product of the strides)."""
        out = 1
        for s in self.strides:
            out *= s
        return out


def trainer(steps: int, lr: float, **options) -> TrainConfig:
    """The recipe's trainer for ``steps`` AdamW steps at peak ``lr``: cosine decay, linear warm-up over
    min(20, steps // 10) steps, a metrics line every max(1, steps // 20) steps, and on a GPU the whole step as one
    captured CUDA graph (fixed patch or volume shapes; eager on a CPU, the reason in ``TrainResult.cuda_graph``);
    ``options`` set other fields."""
    options = {"cuda_graph": True, **options}
    return TrainConfig(max_steps=int(steps), lr=float(lr), scheduler="cosine", warmup_steps=min(20, int(steps) // 10),
                       log_every=max(1, int(steps) // 20), **options)


@dataclass(frozen=True)
class SegExperimentConfig:
    """Everything one TBI -> SAH experiment needs; presets in :data:`PRESETS`."""

    data: SyntheticCTConfig | HeadCTConfig = field(default_factory=SyntheticCTConfig)
    """Synthetic volume grid and imaging settings: the low-resolution generator (:mod:`...datasets.ct.synthetic`) or
    the realistic head (:mod:`...datasets.ct.phantom`) drawn directly on the canonical grid; its spacing is the
    network's canonical spacing."""
    acquisitions: tuple[HeadCTConfig, ...] = ()
    """Other scanner grids of the realistic head: training and tuning cases alternate between ``data`` and these
    (case ``i`` on ``(data, *acquisitions)[i % n]``) and every case is brought to the canonical grid when loaded, as a
    user's scans are; empty = every case on ``data``."""
    n_tbi: int = 40
    """TBI (pre-training) cases; every 5th is held out for the TBI Dice."""
    n_sah: int = 30
    """SAH (adaptation) cases, split into ``folds``."""
    net: UNetConfig = field(default_factory=UNetConfig)
    """Network architecture."""
    windows: tuple[str, ...] = ("brain", "subdural")
    """HU windows used as input channels."""
    batch_size: int = 2
    """Volumes or patches per batch in pre-training and fine-tuning."""
    patch: tuple[int, int, int] = (96, 96, 32)
    """Training crop in voxels of the canonical grid (foreground-aware random crops, multiples of the UNet's stride
    product); shrunk to the volumes where they are smaller."""
    whole_volume_voxels: int = 160 * 160 * 48
    """Cases that all share one shape of at most this many voxels (a multiple of the stride product) train as whole
    volumes instead of patches."""
    samples_per_case: int = 4
    """Random crops per case and pass over the data (patch training)."""
    thick_slice_prob: float = 0.0
    """Probability that a training patch is made to look like a scan with ``thick_slice_factor`` times thicker
    slices brought to the canonical grid (:func:`...datasets.ct.patches.thick_slices`); 0 = never."""
    thick_slice_factor: int = 2
    """Slice-thickness ratio of that augmentation (2: 5 mm scans on a 2.5 mm canonical grid)."""
    pretrain: TrainConfig = field(default_factory=lambda: trainer(300, 3e-3))
    """Trainer of the TBI pre-training."""
    train: TrainConfig = field(default_factory=lambda: trainer(150, 3e-3))
    """Trainer of SAH fine-tuning; its ``lr`` is the rate of ``full`` and ``decoder`` (and of adapters without
    ``adapter_lr``/``adapter_lr_by_method``)."""
    adapter_lr: Optional[float] = None
    """Learning rate of the adapter strategies; None = ``train.lr``."""
    adapter_lr_by_method: tuple[tuple[str, float], ...] = ()
    """Per-method overrides of ``adapter_lr``, e.g. ``(("cp_lora", 0.1),)``."""
    alpha_over_rank: float = 1.0
    """Adapter scale: alpha = ``alpha_over_rank`` * rank."""
    folds: int = 3
    """Cross-validation folds over the SAH cases (the paper: 3)."""
    strategies: tuple[FinetuneStrategy, ...] = FINETUNE_STRATEGIES
    """Strategies of the ``compare`` grid."""
    ranks: tuple[int, ...] = (4, 16, 64)
    """Ranks of every adapter strategy (the larger ones over-parameterise the small layers)."""
    modules: Literal["all", "encoder", "decoder"] = "all"
    """Where adapters go: every (transposed) convolution, or those of the encoder or decoder only."""
    seed: int = 0
    """Seed of the synthetic cases and of the fold permutation (the trainers carry their own ``seed``)."""

    def __post_init__(self) -> None:
        require(self, "n_tbi", self.n_tbi >= 2, ">= 2")
        require(self, "batch_size", self.batch_size >= 1, ">= 1")
        require(self, "folds", 2 <= self.folds <= self.n_sah, f">= 2 and <= n_sah ({self.n_sah})")
        require(self, "strategies", all(s in FINETUNE_STRATEGIES for s in self.strategies), f"some of {FINETUNE_STRATEGIES}")
        require(self, "adapter_lr", self.adapter_lr is None or self.adapter_lr > 0, "> 0 or None")
        require(self, "adapter_lr_by_method", all(len(i) == 2 and i[0] in ADAPTER_METHODS and float(i[1]) > 0 for i in self.adapter_lr_by_method), f"(method, lr > 0) pairs with method one of {ADAPTER_METHODS}")
        require(self, "alpha_over_rank", self.alpha_over_rank > 0, "> 0")
        require(self, "ranks", bool(self.ranks) and all(int(r) >= 1 for r in self.ranks), "ints >= 1")
        require(self, "modules", self.modules in MODULE_GROUPS, f"one of {MODULE_GROUPS}")
        require(self, "windows", self.net.in_channels == len(self.windows), f"{self.net.in_channels} names (net.in_channels)")
        require(self, "data", not any(s % self.net.divisor for s in self.data.shape), f"a grid whose shape is a multiple of {self.net.divisor} (the UNet's stride product)")
        require(self, "train", isinstance(self.pretrain, TrainConfig) and isinstance(self.train, TrainConfig), "a TrainConfig")
        require(self, "patch", len(self.patch) == 3 and all(int(p) >= self.net.divisor and int(p) % self.net.divisor == 0
                                                             for p in self.patch), f"3 multiples of {self.net.divisor} (the UNet's stride product)")
        require(self, "samples_per_case", int(self.samples_per_case) >= 1, ">= 1")
        require(self, "thick_slice_prob", 0.0 <= self.thick_slice_prob <= 1.0, "in [0, 1]")
        require(self, "thick_slice_factor", int(self.thick_slice_factor) >= 2, "an int >= 2")
        require(self, "acquisitions", not self.acquisitions or (isinstance(self.data, HeadCTConfig)
                                                                and all(isinstance(a, HeadCTConfig) for a in self.acquisitions)),
                "HeadCTConfig grids, and only with a realistic-head data config")

    @property
    def data_grids(self):
        """What the case writers take: ``data`` alone, or ``(data, *acquisitions)`` for a cohort from several grids."""
        return (self.data, *self.acquisitions) if self.acquisitions else self.data

    @property
    def grid(self):
        """The network's canonical grid: RAS axes at the synthetic data's spacing (stored in every checkpoint)."""
        from lowrank_vision.datasets.ct.geometry import CanonicalGrid

        return CanonicalGrid(self.data.spacing)

    def lr_for(self, strategy: str) -> float:
        """Fine-tuning learning rate of ``strategy``: per-method override, else ``adapter_lr`` (adapters), else ``train.lr``."""
        if strategy in ADAPTER_METHODS:
            by_method = dict(self.adapter_lr_by_method)
            if strategy in by_method:
                return float(by_method[strategy])
            if self.adapter_lr is not None:
                return float(self.adapter_lr)
        return float(self.train.lr)


_CP_LR = (("cp_lora", 1e-1), ("cp_dora", 1e-1))

PRESETS: dict[str, SegExperimentConfig] = {
    # seconds on a CPU: tests
    "tiny": SegExperimentConfig(
        data=SyntheticCTConfig(shape=(32, 32, 16), spacing=(5.6, 5.6, 10.5), blur_mm=(1.5, 1.5, 3.0)),
        n_tbi=8, n_sah=6, pretrain=trainer(60, 1e-2, cpu=True), train=trainer(20, 1e-2, cpu=True), ranks=(4,),
        strategies=("none", "full", "cp_lora")),
    # the app's default: a few minutes on a CPU; the CP lr 1e-1 was chosen on SAH seeds 1 and 2 (selection data)
    "cpu": SegExperimentConfig(
        data=SyntheticCTConfig(shape=(48, 48, 16), spacing=(3.75, 3.75, 10.5), blur_mm=(1.0, 1.0, 3.0)),
        n_tbi=24, n_sah=12, pretrain=trainer(300, 1e-2, cpu=True), train=trainer(60, 1e-2, cpu=True), ranks=(4, 32),
        adapter_lr_by_method=_CP_LR),
    # the acceptance run (GPU): paper-sized cohorts (124 TBI, 30 SAH), full grid
    "gpu": SegExperimentConfig(
        data=SyntheticCTConfig(shape=(64, 64, 24), spacing=(2.8, 2.8, 7.0)),
        n_tbi=124, n_sah=30, pretrain=trainer(2000, 2e-3), train=trainer(300, 2e-3), batch_size=4, ranks=(4, 16, 48),
        net=UNetConfig(channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 1), num_res_units=2),
        adapter_lr=1e-2, adapter_lr_by_method=_CP_LR),
    # real geometry (GPU): realistic heads drawn on a 1 x 1 x 2.5 mm canonical grid (5 mm slices cost a 1 mm
    # isotropic scan's thin blood: a mask taken to 5 mm and back keeps Dice ~0.76 of itself, 2.5 mm ~0.87;
    # bench/ct_grid_ceiling.py -> docs/results/hemorrhage_real/grid_ceiling.json), patch
    # training with thick-slice augmentation, half the cases drawn as 0.5 x 0.5 x 5 mm scans (in the first 2.5 mm
    # run, trained on 2.5 mm heads only, unseen 0.45 x 0.45 x 5 mm scans scored 0.41), sliding-window eval; 1 residual unit keeps the fp16
    # weights at ~4.5 MB
    "real": SegExperimentConfig(
        data=HeadCTConfig(shape=(192, 224, 64), spacing=(1.0, 1.0, 2.5)),
        n_tbi=64, n_sah=30, pretrain=trainer(1500, 2e-3), train=trainer(150, 2e-3), batch_size=4, patch=(96, 96, 48),
        acquisitions=(HeadCTConfig(shape=(384, 448, 32), spacing=(0.5, 0.5, 5.0), subsample_mm=(1.0, 1.0, 2.5)),),
        samples_per_case=8, thick_slice_prob=0.5, ranks=(4, 16, 48),
        net=UNetConfig(channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 1), num_res_units=1),
        adapter_lr=1e-2, adapter_lr_by_method=_CP_LR),
}


def parse_method_lr(items: Sequence[str]) -> tuple[tuple[str, float], ...]:
    """``["cp_lora=0.1", ...]`` -> ``(("cp_lora", 0.1), ...)``; a clear error for anything else."""
    pairs = []
    for item in items:
        method, sep, lr = item.partition("=")
        try:
            pairs.append((method, float(lr)) if sep else None)
        except ValueError:
            pairs.append(None)
        if pairs[-1] is None:
            raise ValueError(f"--method-lr expects METHOD=LR (e.g. cp_lora=0.1), got {item!r}")
    return tuple(pairs)


def from_options(preset: str = "cpu", *, arch: Optional[str] = None, seed: Optional[int] = None,
                 pretrain_steps: Optional[int] = None, finetune_steps: Optional[int] = None, device: Optional[str] = None,
                 mixed_precision: Optional[str] = None, method_lr: Sequence[str] = (), **fields) -> SegExperimentConfig:
    """A preset with the app's options applied (``None`` keeps the preset's value).

    ``seed`` sets the data seed and both trainers' seeds; ``*_steps`` rebuild that trainer with :func:`trainer`;
    ``device`` other than ``cpu`` lets the trainers use the GPU; ``adapter_lr`` alone replaces the preset's
    per-method rates, ``method_lr`` (``METHOD=LR`` strings) replaces them explicitly; other keyword arguments
    are fields of :class:`SegExperimentConfig`.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    cfg = PRESETS[preset]
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if v is not None}
    pre, tr = cfg.pretrain, cfg.train
    if pretrain_steps is not None:
        pre = replace(trainer(pretrain_steps, pre.lr), seed=pre.seed, cpu=pre.cpu, mixed_precision=pre.mixed_precision)
    if finetune_steps is not None:
        tr = replace(trainer(finetune_steps, tr.lr), seed=tr.seed, cpu=tr.cpu, mixed_precision=tr.mixed_precision)
    trainer_changes = {}
    if seed is not None:
        changes["seed"] = trainer_changes["seed"] = int(seed)
    if device is not None:
        if device != "cpu" and device not in ("cuda", "cuda:0"):
            raise ValueError(f"--device: training uses the first visible GPU (accelerate); choose it with CUDA_VISIBLE_DEVICES "
                             f"and --device cuda, got {device!r}")
        trainer_changes["cpu"] = device == "cpu"
    if mixed_precision is not None:
        trainer_changes["mixed_precision"] = mixed_precision
    changes["pretrain"], changes["train"] = replace(pre, **trainer_changes), replace(tr, **trainer_changes)
    if arch is not None:
        changes["net"] = replace(cfg.net, kind=arch)
    if method_lr:
        changes["adapter_lr_by_method"] = parse_method_lr(method_lr)
    elif fields.get("adapter_lr") is not None:
        changes["adapter_lr_by_method"] = ()  # --adapter-lr alone sets every adapter method's rate
    return replace(cfg, **changes)
