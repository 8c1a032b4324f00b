"""SS2D (VMamba's 2-D selective scan) and its low-rank form from DLRMamba.

SS2D: Liu et al., "VMamba: Visual State Space Model" (arXiv 2401.10166). The feature map is read
in four orders (row-major, column-major and both reversed), each order runs a selective scan
(:mod:`.scan`) with its own ``x_proj``/``dt_proj``/``A``/``D``, and the four outputs are folded back
and summed. Around the scan: ``in_proj`` (C -> 2E, the second half gates the output), a 3x3
depthwise conv + SiLU, and ``out_norm`` + ``out_proj`` (E -> C).

Low-rank SS2D: Zhang et al., "DLRMamba: Distilling Low-Rank Mamba for Edge Multispectral Fusion
Object Detection" (arXiv 2603.06920), Eq. 5 writes the student's state transition as ``U V^T`` with
``U, V`` of ``N x r``. In (V)Mamba ``A`` is diagonal per channel (``A_log`` is ``[K*E, N]``), so a
dense ``N x N`` transition never exists. What this module factorises (the choice the paper leaves
open, stated here):

* the state-transition parameters: the ``[K*E, N]`` matrix ``A_log = U V^T`` with ``U`` of
  ``[K*E, r]`` and ``V`` of ``[N, r]`` -- the matrix the SVD-alignment loss compares with the
  teacher's truncated SVD (``A = -exp(U V^T)`` stays negative, so the scan stays stable);
* the projections around the scan, each weight ``W`` (``m x n``) -> ``U V^T``: ``in_proj``,
  ``out_proj``, the four ``x_proj`` and the four ``dt_proj`` (Mamba-YOLO's ``ssm_rank_ratio`` knob
  covers the same projections);
* the state itself (``state``): the student keeps ``N_s = max(1, round(rho * N))`` of the teacher's
  ``N`` state modes -- the slowest-decaying ones (VMamba initialises ``A_n = -n``), with their
  ``B``/``C`` rows -- so the scan, the cost that dominates SS2D on a CPU, shrinks by ``rho`` too. The
  paper aligns teacher and student hidden states through "a projection P that matches dimensions";
  here P is that fixed selection of the first ``N_s`` modes (:func:`teacher_state_projection`).

``targets`` picks any subset. The rank ratio ``rho`` is a *parameter* ratio for matrices:
``r = max(1, floor(rho * m * n / (m + n)))``, so a factorised ``m x n`` matrix keeps about ``rho``
of its parameters (``rho = 0.5`` halves them, the paper's ~50 % cut).

The core (``lowrank_vision.core``) has adapters (a frozen base plus a low-rank delta) but no
factorised layer trained from scratch yet (``core/factorize`` in DESIGN.md), and an adapter would
add parameters instead of removing them; the factor pair therefore lives here as :class:`Factorised`.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .scan import ScanMode, selective_scan

__all__ = ["SS2D", "VSSBlock", "Factorised", "factor_rank", "state_size", "LOW_RANK_TARGETS", "ss2d_param_count", "low_rank_from",
           "teacher_state_projection", "svd_factors"]

LOW_RANK_TARGETS = ("in_proj", "out_proj", "x_proj", "dt_proj", "A", "state")
K_DIRECTIONS = 4


def state_size(d_state: int, rank_ratio: float, targets: Iterable[str] = LOW_RANK_TARGETS) -> int:
    """State modes the SS2D keeps: ``d_state``, or ``max(1, round(rank_ratio * d_state))`` when ``"state"`` is targeted."""
    return max(1, round(rank_ratio * d_state)) if rank_ratio < 1.0 and "state" in tuple(targets) else d_state


def teacher_state_projection(teacher_states: Tensor, student_d_state: int) -> Tensor:
    """DLRMamba's P for the hidden-state loss: the teacher's states ``[..., N, L]`` restricted to the student's modes."""
    return teacher_states[..., :student_d_state, :]


def factor_rank(m: int, n: int, ratio: float) -> int:
    """Rank that keeps about ``ratio`` of an ``m x n`` matrix's parameters: ``max(1, floor(ratio*m*n/(m+n)))``."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"rank_ratio must be in (0, 1], got {ratio!r}")
    return max(1, int(math.floor(ratio * m * n / (m + n))))


class Factorised(nn.Module):
    """A (batched) weight ``[*batch, m, n]``, dense or as ``u @ v`` with ``u [*batch, m, r]``, ``v [*batch, r, n]``."""

    def __init__(self, weight: Tensor, rank: Optional[int] = None):
        super().__init__()
        self.shape = tuple(weight.shape)
        if rank is None:
            self.weight = nn.Parameter(weight.detach().clone())
            self.u = self.v = None
        else:
            u, v = svd_factors(weight, rank)
            self.weight = None
            self.u, self.v = nn.Parameter(u), nn.Parameter(v)

    @property
    def rank(self) -> Optional[int]:
        return None if self.u is None else self.u.shape[-1]

    def dense(self) -> Tensor:
        return self.weight if self.u is None else self.u @ self.v

    def linear(self, x: Tensor) -> Tensor:
        """``x @ W^T`` on the last axis (2-D weight), through the rank-r bottleneck when factorised."""
        if self.u is None:
            return F.linear(x, self.weight)
        return F.linear(F.linear(x, self.v), self.u)

    def batched(self, x: Tensor) -> Tensor:
        """``[b, K, n, L] -> [b, K, m, L]`` with one weight per direction ``k``."""
        if self.u is None:
            return torch.einsum("kmn,bknl->bkml", self.weight, x)
        return torch.einsum("kmr,bkrl->bkml", self.u, torch.einsum("krn,bknl->bkrl", self.v, x))

    def extra_repr(self) -> str:
        return f"shape={self.shape}, rank={self.rank}"


def svd_factors(weight: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Truncated SVD ``W ~ (U sqrt(S))_{:, :r} (sqrt(S) V^T)_{:r}`` -- the teacher targets of DLRMamba's L_SVD."""
    w = weight.detach().float()
    U, S, Vh = torch.linalg.svd(w, full_matrices=False)
    root = S[..., :rank].sqrt()
    u = U[..., :, :rank] * root.unsqueeze(-2)
    v = root.unsqueeze(-1) * Vh[..., :rank, :]
    return u.to(weight.dtype).contiguous(), v.to(weight.dtype).contiguous()


def _inverse_softplus(x: Tensor) -> Tensor:
    return x + torch.log(-torch.expm1(-x))


class SS2D(nn.Module):
    """Four-direction 2-D selective scan on ``[B, C, H, W]`` (returns the same shape)."""

    def __init__(self, channels: int, d_state: int = 16, expand: float = 2.0, rank_ratio: float = 1.0,
                 targets: Iterable[str] = LOW_RANK_TARGETS, scan_mode: ScanMode = "auto", chunk: int = 32):
        super().__init__()
        if channels < 1 or d_state < 1 or expand <= 0:
            raise ValueError(f"SS2D: channels, d_state and expand must be positive, got {channels}, {d_state}, {expand}")
        targets = tuple(targets)
        unknown = sorted(set(targets) - set(LOW_RANK_TARGETS))
        if unknown:
            raise ValueError(f"SS2D.targets must be a subset of {LOW_RANK_TARGETS}, got unknown {unknown}")
        if not 0.0 < rank_ratio <= 1.0:
            raise ValueError(f"SS2D.rank_ratio must be in (0, 1], got {rank_ratio!r}")
        self.channels, self.expand, self.teacher_d_state = channels, expand, d_state
        self.d_state = state_size(d_state, rank_ratio, targets)
        self.rank_ratio, self.targets, self.scan_mode, self.chunk = float(rank_ratio), targets, scan_mode, chunk
        inner = self.inner = int(expand * channels)
        dt_rank = self.dt_rank = math.ceil(channels / 16)
        K, N = K_DIRECTIONS, self.d_state

        def make(name: str, weight: Tensor) -> Factorised:
            low = rank_ratio < 1.0 and name in targets
            return Factorised(weight, factor_rank(weight.shape[-2], weight.shape[-1], rank_ratio) if low else None)

        def uniform(*shape: int, fan_in: int) -> Tensor:
            bound = 1.0 / math.sqrt(fan_in)
            return torch.empty(*shape).uniform_(-bound, bound)

        self.in_proj = make("in_proj", uniform(2 * inner, channels, fan_in=channels))
        self.conv = nn.Conv2d(inner, inner, 3, padding=1, groups=inner)
        self.x_proj = make("x_proj", uniform(K, dt_rank + 2 * N, inner, fan_in=inner))
        self.dt_proj = make("dt_proj", uniform(K, inner, dt_rank, fan_in=dt_rank))
        dt = torch.exp(torch.rand(K, inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(_inverse_softplus(dt))
        a_log = torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(K * inner, 1)
        self.A_log = make("A", a_log)
        self.Ds = nn.Parameter(torch.ones(K, inner))
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = make("out_proj", uniform(channels, inner, fan_in=inner))
        self.record = False
        """When True, forward keeps ``last_states`` ([b, K, E, N, L]) and ``last_output`` for distillation."""
        self.last_states: Optional[Tensor] = None
        self.last_output: Optional[Tensor] = None

    def forward(self, x: Tensor) -> Tensor:
        b, _, H, W = x.shape
        K, N, E, L = K_DIRECTIONS, self.d_state, self.inner, H * W
        xz = self.in_proj.linear(x.permute(0, 2, 3, 1))  # [b, H, W, 2E]
        xi, z = xz.chunk(2, dim=-1)
        xi = F.silu(self.conv(xi.permute(0, 3, 1, 2).contiguous()))  # [b, E, H, W]
        row = xi.flatten(2)
        col = xi.transpose(2, 3).flatten(2)
        xs = torch.stack([row, col, row.flip(-1), col.flip(-1)], dim=1)  # [b, K, E, L]
        x_dbl = self.x_proj.batched(xs)  # [b, K, R + 2N, L]
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, N, N], dim=2)
        delta = F.softplus(self.dt_proj.batched(dts) + self.dt_bias.unsqueeze(-1))  # [b, K, E, L]
        A = -torch.exp(self.A_log.dense().float()).view(K, E, N)
        out = selective_scan(xs, delta, A, Bs, Cs, self.Ds, mode=self.scan_mode, chunk=self.chunk, return_states=self.record)
        ys, states = (out if self.record else (out, None))
        y = ys[:, 0] + ys[:, 2].flip(-1)
        y_col = (ys[:, 1] + ys[:, 3].flip(-1)).view(b, E, W, H).transpose(2, 3).reshape(b, E, L)
        y = (y + y_col).view(b, E, H, W).permute(0, 2, 3, 1)
        y = self.out_norm(y) * F.silu(z)
        out = self.out_proj.linear(y).permute(0, 3, 1, 2).contiguous()
        if self.record:
            self.last_states, self.last_output = states, out
        return out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, d_state={self.d_state}, expand={self.expand}, rank_ratio={self.rank_ratio}"


def ss2d_param_count(channels: int, d_state: int = 16, expand: float = 2.0, rank_ratio: float = 1.0,
                     targets: Iterable[str] = LOW_RANK_TARGETS) -> int:
    """Parameters of :class:`SS2D` from the formula (a dense ``m x n`` -> ``r(m + n)`` when factorised)."""
    targets = tuple(targets)
    E, N, K = int(expand * channels), state_size(d_state, rank_ratio, targets), K_DIRECTIONS
    R = math.ceil(channels / 16)

    def mat(name: str, m: int, n: int, batch: int = 1) -> int:
        if rank_ratio < 1.0 and name in targets:
            return batch * factor_rank(m, n, rank_ratio) * (m + n)
        return batch * m * n

    total = mat("in_proj", 2 * E, channels) + mat("out_proj", channels, E)
    total += 9 * E + E  # depthwise conv weight + bias
    total += mat("x_proj", R + 2 * N, E, K) + mat("dt_proj", E, R, K) + K * E  # + dt_bias
    total += mat("A", K * E, N) + K * E + 2 * E  # A_log, Ds, out_norm
    return total


class VSSBlock(nn.Module):
    """Residual SS2D block for ultralytics YAMLs: ``x + SS2D(LayerNorm(x))`` on ``[B, C, H, W]``; keeps C.

    YAML row: ``[-1, n, VSSBlock, [c2, d_state, expand, rank_ratio]]`` -- the string ``c2`` is
    resolved by ultralytics' ``parse_model`` to the previous layer's output channels (see
    :mod:`.ultralytics_host`)."""

    def __init__(self, channels: int, d_state: int = 16, expand: float = 2.0, rank_ratio: float = 1.0):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.ss2d = SS2D(channels, d_state=d_state, expand=expand, rank_ratio=rank_ratio)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.ss2d(self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


@torch.no_grad()
def low_rank_from(teacher: SS2D, rank_ratio: float, targets: Iterable[str] = LOW_RANK_TARGETS) -> SS2D:
    """A low-rank SS2D initialised from a trained full-rank one by truncated SVD of each targeted matrix."""
    if teacher.rank_ratio != 1.0:
        raise ValueError(f"low_rank_from: the teacher must be full-rank (rank_ratio 1.0), got {teacher.rank_ratio}")
    student = SS2D(teacher.channels, teacher.d_state, teacher.expand, rank_ratio, targets, teacher.scan_mode, teacher.chunk)
    for name, target in teacher_targets(teacher, student.d_state).items():
        module = getattr(student, name)
        if module.u is None:
            module.weight.copy_(target)
        else:
            u, v = svd_factors(target, module.rank)
            module.u.copy_(u)
            module.v.copy_(v)
    student.conv.load_state_dict(teacher.conv.state_dict())
    student.out_norm.load_state_dict(teacher.out_norm.state_dict())
    student.dt_bias.copy_(teacher.dt_bias)
    student.Ds.copy_(teacher.Ds)
    return student.to(teacher.dt_bias.device)


def teacher_targets(teacher: SS2D, student_d_state: int) -> dict[str, Tensor]:
    """The teacher's dense matrices restricted to the student's state modes, by :class:`Factorised` name."""
    R, N, Ns = teacher.dt_rank, teacher.d_state, student_d_state
    x_proj = teacher.x_proj.dense()
    rows = torch.cat([torch.arange(R), R + torch.arange(Ns), R + N + torch.arange(Ns)]).to(x_proj.device)
    return {"in_proj": teacher.in_proj.dense(), "out_proj": teacher.out_proj.dense(), "x_proj": x_proj[:, rows],
            "dt_proj": teacher.dt_proj.dense(), "A_log": teacher.A_log.dense()[:, :Ns]}
