"""Low-rank factorisation of trained weights: SVD, per-layer rank choice, Tucker-2 and CP kernels.

Pure tensor math behind ``core.factorize`` (no modules, no model walking).

* Matrix form: a weight viewed as ``W [C_out, C_in*prod(k)]`` is cut to its best rank-``r``
  approximation ``U_r S_r V_r^T`` (Eckart-Young). The factors are split as ``up = U_r sqrt(S_r)``
  and ``down = sqrt(S_r) V_r^T`` so both have the same scale (a choice: any split gives the same
  product; the balanced one trains better when the factors are fine-tuned).
* Rank choice, after WeLore (Jaiswal et al., "From GaLore to WeLore: How Low-Rank Weights
  Non-uniformly Emerge from Low-Rank Gradients", arXiv 2407.11239): matrices whose singular values
  have a heavy tail are cut harder. The abstract leaves the exact rule open; here every matrix's
  spectrum is normalised by its largest singular value and ONE global threshold ``tau`` keeps, in
  every matrix, the singular values ``s_i / s_1 >= tau``. ``tau`` is the smallest value (most rank)
  that meets a parameter budget. A matrix whose factorised form would not save parameters stays
  dense (WeLore's "non-low-rank components"). An error budget instead keeps, per matrix, the
  smallest rank with relative Frobenius error at most ``max_error``.
* Tucker-2 (mode-0 and mode-1 HOSVD of a conv kernel ``[C_out, C_in, *k]``, Kim et al. 2016
  style): ``1x1 (C_in -> r_in)``, core ``k (r_in -> r_out)``, ``1x1 (r_out -> C_out)``.
* CP (CANDECOMP/PARAFAC) by alternating least squares: ``W = sum_r U[:, r] (x) V[:, r] (x) K_1[:, r] ...``
  (Lebedev et al. 2015 style): ``1x1 (C_in -> R)``, one depthwise conv per kernel axis, ``1x1 (R -> C_out)``.
* Ordered ranks (Maestro, Horvath et al., arXiv 2308.14929): :func:`sample_ordered_ranks` draws how
  many leading ranks each layer keeps in one training step (ordered dropout), and a hierarchical
  group lasso shrinks the trailing ranks during training so the rank is learned. Groups are nested:
  group ``b`` holds every parameter of ranks ``b..r-1`` (columns of ``up``, rows of ``down``), its
  norm :func:`trailing_group_norms` ``g_b = sqrt(||up[:, b:]||^2 + ||down[b:]||^2)``, the penalty
  :func:`hierarchical_group_lasso` ``sum_b g_b``; rank ``i`` sits in ``i + 1`` groups, so the later
  a rank, the harder it is pulled to zero. Choices the abstract leaves open: one joint norm per
  group over both factors (not one norm per factor), no per-group size weights, and the rank kept
  after training (:func:`rank_for_group_threshold`) is the shortest prefix whose trailing group norm
  is at most ``threshold * g_0`` (relative to the layer's whole norm, so one threshold fits layers
  of every scale).
"""

from __future__ import annotations

import math
import string
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = [
    "as_matrix", "singular_values", "svd_factors", "tail_error", "relative_error",
    "matrix_param_count", "tucker2_param_count", "cp_param_count",
    "ranks_for_error", "ranks_for_threshold", "heavy_tail_threshold",
    "tucker2_ranks_for", "cp_rank_for", "tucker2_factors", "tucker2_weight", "cp_als", "cp_weight",
    "sample_ordered_ranks", "trailing_group_norms", "hierarchical_group_lasso", "rank_for_group_threshold",
]


# -- matrix form -----------------------------------------------------------------------------------
def as_matrix(weight: Tensor) -> Tensor:
    """``[C_out, C_in, *k]`` (or ``[C_out, C_in]``) viewed as ``[C_out, C_in*prod(k)]``."""
    return weight.reshape(weight.shape[0], -1)


def singular_values(weight: Tensor) -> Tensor:
    """Singular values of the matrix view, descending, in float64 on the CPU."""
    return torch.linalg.svdvals(as_matrix(weight).detach().to("cpu", torch.float64))


def svd_factors(weight: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-``rank`` factors ``(down [r, C_in*prod(k)], up [C_out, r])`` with ``up @ down ~= W``.

    Columns are in order of decreasing singular value, so keeping the first ``k`` gives the best rank-``k`` cut.
    """
    matrix = as_matrix(weight).detach().to(torch.float64)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    up = u[:, :rank] * root
    down = root[:, None] * vh[:rank]
    return down.to(weight.dtype), up.to(weight.dtype)


def tail_error(s: Tensor) -> Tensor:
    """``e[r]`` = relative Frobenius error of the rank-``r`` cut, for ``r = 0 .. len(s)``."""
    energy = s.to(torch.float64).square()
    total = energy.sum().clamp_min(1e-300)
    tail = torch.cat([energy.flip(0).cumsum(0).flip(0), energy.new_zeros(1)])
    return (tail / total).sqrt()


def relative_error(s: Tensor, rank: int) -> float:
    """``||W - W_r||_F / ||W||_F`` from the singular values."""
    return float(tail_error(s)[rank])


def matrix_param_count(out_channels: int, fan_in: int, rank: int) -> int:
    """Weights of ``down`` and ``up``: ``r * (C_out + C_in*prod(k))`` (bias not included)."""
    return rank * (out_channels + fan_in)


# -- rank choice -----------------------------------------------------------------------------------
def ranks_for_threshold(spectra: Sequence[Tensor], tau: float) -> list[int]:
    """Per matrix: how many singular values reach ``tau * s_1`` (at least 1)."""
    return [max(1, int((s >= tau * s[0]).sum())) for s in spectra]


def _budgeted_count(shapes: Sequence[tuple[int, int]], ranks: Sequence[int]) -> int:
    """Weights after factorising, a matrix that would not shrink counting as dense."""
    return sum(min(matrix_param_count(o, i, r), o * i) for (o, i), r in zip(shapes, ranks))


def heavy_tail_threshold(spectra: Sequence[Tensor], shapes: Sequence[tuple[int, int]], max_params: int) -> Optional[float]:
    """The smallest global threshold ``tau`` whose ranks keep the factorised weights within ``max_params``.

    ``shapes`` are the ``(C_out, C_in*prod(k))`` of the matrices. Returns ``None`` when even rank 1
    everywhere exceeds ``max_params``. The weight count only grows as ``tau`` falls, so a bisection over
    the sorted normalised singular values finds it.
    """
    candidates = torch.cat([(s / s[0]).to(torch.float64) for s in spectra]).unique(sorted=True)  # ascending
    if _budgeted_count(shapes, ranks_for_threshold(spectra, float("inf"))) > max_params:
        return None
    lo, hi = 0, len(candidates) - 1  # candidates[-1] == 1.0 keeps rank 1 (its count was checked above)
    while lo < hi:
        mid = (lo + hi) // 2
        if _budgeted_count(shapes, ranks_for_threshold(spectra, float(candidates[mid]))) <= max_params:
            hi = mid
        else:
            lo = mid + 1
    return float(candidates[lo])


def ranks_for_error(spectra: Sequence[Tensor], max_error: float) -> list[int]:
    """Per matrix: the smallest rank (>= 1) whose relative Frobenius error is at most ``max_error``."""
    ranks = []
    for s in spectra:
        errors = tail_error(s)
        ok = (errors[1:] <= max_error).nonzero()
        ranks.append(int(ok[0]) + 1 if len(ok) else len(s))
    return ranks


# -- Tucker-2 --------------------------------------------------------------------------------------
def tucker2_param_count(out_channels: int, in_channels: int, kernel_numel: int, rank_out: int, rank_in: int) -> int:
    return in_channels * rank_in + rank_in * rank_out * kernel_numel + rank_out * out_channels


def tucker2_ranks_for(out_channels: int, in_channels: int, kernel_numel: int, max_params: int) -> tuple[int, int]:
    """Largest equal ``(r_out, r_in)`` (capped by the channel counts) within ``max_params`` (at least 1)."""
    best = 1
    for r in range(1, min(out_channels, in_channels) + 1):
        if tucker2_param_count(out_channels, in_channels, kernel_numel, r, r) > max_params:
            break
        best = r
    return best, best


def _leading_vectors(unfolded: Tensor, rank: int) -> Tensor:
    u, _, _ = torch.linalg.svd(unfolded, full_matrices=False)
    return u[:, :rank]


def tucker2_factors(weight: Tensor, rank_out: int, rank_in: int, iterations: int = 5) -> tuple[Tensor, Tensor, Tensor]:
    """``(P_out [C_out, r_out], core [r_out, r_in, *k], P_in [C_in, r_in])`` by HOSVD refined with HOOI sweeps."""
    w = weight.detach().to(torch.float64)
    out_channels, in_channels = w.shape[:2]
    p_out = _leading_vectors(w.reshape(out_channels, -1), rank_out)
    p_in = _leading_vectors(w.transpose(0, 1).reshape(in_channels, -1), rank_in)
    for _ in range(iterations):
        p_out = _leading_vectors(torch.einsum("oi...,ib->ob...", w, p_in).reshape(out_channels, -1), rank_out)
        p_in = _leading_vectors(torch.einsum("oi...,oa->ia...", w, p_out).reshape(in_channels, -1), rank_in)
    core = torch.einsum("oi...,oa,ib->ab...", w, p_out, p_in)
    return p_out.to(weight.dtype), core.to(weight.dtype), p_in.to(weight.dtype)


def tucker2_weight(p_out: Tensor, core: Tensor, p_in: Tensor) -> Tensor:
    """The dense kernel ``core x_0 P_out x_1 P_in``."""
    return torch.einsum("ab...,oa,ib->oi...", core, p_out, p_in)


# -- CP --------------------------------------------------------------------------------------------
def cp_param_count(out_channels: int, in_channels: int, kernel_size: Sequence[int], rank: int) -> int:
    return rank * (out_channels + in_channels + sum(kernel_size))


def cp_rank_for(out_channels: int, in_channels: int, kernel_size: Sequence[int], max_params: int) -> int:
    return max(1, max_params // (out_channels + in_channels + sum(kernel_size)))


def _einsum_letters(n: int) -> list[str]:
    return [c for c in string.ascii_lowercase if c != "r"][:n]


def cp_weight(factors: Sequence[Tensor]) -> Tensor:
    """``sum_r factors[0][:, r] (x) factors[1][:, r] (x) ...``."""
    letters = _einsum_letters(len(factors))
    return torch.einsum(",".join(f"{c}r" for c in letters) + "->" + "".join(letters), *factors)


def cp_als(tensor: Tensor, rank: int, *, iterations: int = 100, seed: int = 0, tol: float = 1e-9) -> list[Tensor]:
    """CP decomposition by alternating least squares; factor ``n`` is ``[tensor.shape[n], rank]``.

    Initialised from the leading left singular vectors of each unfolding (random columns beyond them,
    from ``seed``); each sweep solves every factor in turn with the others fixed; stops when the
    relative fit changes by less than ``tol``. The scale is spread evenly over the factors at the end.
    Runs on the CPU in float64 (kernels are small); the factors come back on the tensor's device and dtype.
    """
    x = tensor.detach().to("cpu", torch.float64)
    dims = x.dim()
    generator = torch.Generator().manual_seed(seed)
    factors = []
    for mode in range(dims):
        unfolded = x.movedim(mode, 0).reshape(x.shape[mode], -1)
        lead = _leading_vectors(unfolded, min(rank, x.shape[mode]))
        extra = torch.randn(x.shape[mode], rank - lead.shape[1], generator=generator, dtype=torch.float64)
        factors.append(torch.cat([lead, extra / math.sqrt(x.shape[mode])], dim=1))
    letters = _einsum_letters(dims)
    norm = x.norm()
    previous = float("inf")
    for _ in range(iterations):
        for mode in range(dims):
            others = [f for n, f in enumerate(factors) if n != mode]
            gram = torch.ones(rank, rank, dtype=torch.float64)
            for f in others:
                gram = gram * (f.t() @ f)
            spec = ",".join(["".join(letters)] + [f"{letters[n]}r" for n in range(dims) if n != mode])
            rhs = torch.einsum(f"{spec}->{letters[mode]}r", x, *others)
            factors[mode] = torch.linalg.lstsq(gram, rhs.t()).solution.t()
        error = float((x - cp_weight(factors)).norm() / norm.clamp_min(1e-300))
        if abs(previous - error) < tol:
            break
        previous = error
    norms = torch.stack([f.norm(dim=0).clamp_min(1e-300) for f in factors])  # [dims, R]
    share = norms.prod(0).pow(1.0 / dims)
    return [(f / n * share).to(tensor.device, tensor.dtype) for f, n in zip(factors, norms)]


# -- ordered ranks (Maestro) -----------------------------------------------------------------------
def sample_ordered_ranks(ranks: Sequence[int], generator: torch.Generator, *, min_fraction: float = 0.0, shared: bool = False) -> list[int]:
    """Ranks to keep this step: uniform over ``ceil(min_fraction * r) .. r`` (at least 1) per layer.

    ``shared=True`` draws one fraction ``u ~ U(0, 1]`` for all layers (FjORD-style, ``ceil(u * r)``);
    otherwise each layer draws its own rank (Maestro's per-layer ordered dropout).
    """
    if shared:
        u = 1.0 - float(torch.rand((), generator=generator))  # (0, 1]
        u = min_fraction + (1.0 - min_fraction) * u
        return [max(1, math.ceil(u * r)) for r in ranks]
    out = []
    for r in ranks:
        low = max(1, math.ceil(min_fraction * r))
        out.append(int(torch.randint(low, r + 1, (), generator=generator)))
    return out


def trailing_group_norms(down: Tensor, up: Tensor) -> Tensor:
    """``g[b] = sqrt(||up[:, b:]||_F^2 + ||down[b:]||_F^2)`` for ``b = 0 .. r-1`` (non-increasing in ``b``).

    ``down`` is ``[r, ...]`` (rank first), ``up`` is ``[C_out, r, ...]`` (rank second), as stored by
    Linear and convolution layers. Differentiable.
    """
    per_rank = down.reshape(down.shape[0], -1).square().sum(1) + up.transpose(0, 1).reshape(up.shape[1], -1).square().sum(1)
    return per_rank.flip(0).cumsum(0).flip(0).clamp_min(0).sqrt()


def hierarchical_group_lasso(down: Tensor, up: Tensor) -> Tensor:
    """Maestro's nested group lasso of one factorised layer: ``sum_b g[b]`` (see :func:`trailing_group_norms`)."""
    return trailing_group_norms(down, up).sum()


def rank_for_group_threshold(group_norms: Tensor, threshold: float) -> int:
    """The fewest leading ranks ``k >= 1`` whose trailing group ``g[k]`` is at most ``threshold * g[0]`` (``r`` if none)."""
    norms = group_norms.detach()
    small = (norms[1:] <= threshold * norms[0]).nonzero()
    return int(small[0]) + 1 if len(small) else len(norms)
