"""Selective scan of Mamba/VMamba in pure PyTorch: sequential, chunked-parallel and a closed-form reference.

The recurrence (Gu & Dao, "Mamba", arXiv 2312.00752, Alg. 2; used per direction by VMamba's SS2D,
arXiv 2401.10166) with zero-order-hold for ``A`` and Euler for ``B``::

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        (per channel d, per state n)
    y_t = sum_n C_t[n] * h_t[n] + D * u_t

Shapes (K scan directions share ``B``/``C`` within a direction, as in VMamba)::

    u, delta: [b, K, D, L]    A: [K, D, N]    B, C: [b, K, N, L]    Dskip: [K, D]

Three implementations with the same numbers (tests check all against each other):

* :func:`scan_sequential` -- a loop over ``L`` (``unbind``, not indexing, so backward stays fast).
  Fastest on a CPU (the log-depth form does ``log2(chunk)`` times the work).
* :func:`scan_chunked` -- work-efficient two-level parallel scan: an inclusive Hillis-Steele scan of
  the affine maps ``h -> a*h + b`` inside chunks of ``chunk`` steps, the same scan applied
  recursively to the chunk carries, then one fix-up multiply. Only products of decays in (0, 1]
  appear, so no ``exp`` of a positive sum can overflow (the cumsum form of "mamba-mini" does).
  Static shapes and no data-dependent control flow: it traces and exports to ONNX.
* :func:`scan_reference` -- the closed form ``h_t = sum_{s<=t} exp(P_t - P_s) dBx_s`` with
  ``P = cumsum(delta*A)``, an ``O(L^2)`` matrix per channel; for tests only.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["selective_scan", "scan_sequential", "scan_chunked", "scan_reference", "affine_scan", "ScanMode"]

ScanMode = Literal["auto", "sequential", "chunked"]


def _discretise(u: Tensor, delta: Tensor, A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """``dA = exp(delta*A)`` and ``dBx = delta*B*u``, both ``[b, K, D, N, L]``."""
    dA = torch.exp(delta.unsqueeze(-2) * A.unsqueeze(-1))
    dBx = (delta * u).unsqueeze(-2) * B.unsqueeze(2)
    return dA, dBx


def _readout(h: Tensor, u: Tensor, C: Tensor, Dskip: Optional[Tensor]) -> Tensor:
    y = (h * C.unsqueeze(2)).sum(-2)
    return y if Dskip is None else y + u * Dskip.unsqueeze(-1)


def _hillis_steele(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive scan of affine maps along the last axis: returns (prod of a, h with h_{-1}=0)."""
    length, shift = a.shape[-1], 1
    while shift < length:
        b = torch.cat([b[..., :shift], a[..., shift:] * b[..., :-shift] + b[..., shift:]], dim=-1)
        a = torch.cat([a[..., :shift], a[..., shift:] * a[..., :-shift]], dim=-1)
        shift *= 2
    return a, b


def affine_scan(a: Tensor, b: Tensor, chunk: int = 32) -> Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` (``h_{-1} = 0``) for every ``t`` along the last axis, chunked-parallel."""
    if chunk < 2:
        raise ValueError(f"affine_scan: chunk must be >= 2, got {chunk!r}")
    length = a.shape[-1]
    if length <= chunk:
        return _hillis_steele(a, b)[1]
    pad = (-length) % chunk
    if pad:
        a = F.pad(a, (0, pad), value=1.0)
        b = F.pad(b, (0, pad), value=0.0)
    n_chunks = a.shape[-1] // chunk
    a = a.reshape(*a.shape[:-1], n_chunks, chunk)
    b = b.reshape(*b.shape[:-1], n_chunks, chunk)
    a_cum, h_local = _hillis_steele(a, b)
    carry = affine_scan(a_cum[..., -1], h_local[..., -1], chunk)  # state at the end of every chunk
    carry_in = F.pad(carry[..., :-1], (1, 0), value=0.0)  # state entering every chunk
    h = h_local + a_cum * carry_in.unsqueeze(-1)
    return h.reshape(*h.shape[:-2], n_chunks * chunk)[..., :length]


def scan_chunked(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, Dskip: Optional[Tensor] = None,
                 *, chunk: int = 32, return_states: bool = False):
    """Chunked-parallel selective scan (see module docstring); ``y`` is ``[b, K, D, L]``, states ``[b, K, D, N, L]``."""
    dA, dBx = _discretise(u, delta, A, B)
    h = affine_scan(dA, dBx, chunk)
    y = _readout(h, u, C, Dskip)
    return (y, h) if return_states else y


def scan_sequential(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, Dskip: Optional[Tensor] = None,
                    *, return_states: bool = False, block: int = 32):
    """Selective scan as a loop over time; same arguments and results as :func:`scan_chunked`.

    Blocked for a CPU: per block of ``block`` steps the decays and inputs are discretised at once
    (time on the leading axis, so every step's slice is contiguous and the block stays in cache),
    the loop itself is one fused multiply-add per step, and the read-out over ``N`` runs once per
    block. Nothing of size ``L * D * N`` is materialised unless ``return_states``.
    """
    length = u.shape[-1]
    h = u.new_zeros(*u.shape[:-1], A.shape[-1])
    ys, states = [], []
    for start in range(0, length, block):
        sl = slice(start, min(length, start + block))
        d = delta[..., sl].movedim(-1, 0).unsqueeze(-1)  # [T, b, K, D, 1]
        dA = torch.exp(d * A)
        dBx = (d * u[..., sl].movedim(-1, 0).unsqueeze(-1)) * B[..., sl].movedim(-1, 0).unsqueeze(-2)
        hs = []
        for a_t, b_t in zip(dA.unbind(0), dBx.unbind(0)):
            h = torch.addcmul(b_t, a_t, h)
            hs.append(h)
        hb = torch.stack(hs, dim=0)  # [T, b, K, D, N]
        ys.append((hb * C[..., sl].movedim(-1, 0).unsqueeze(-2)).sum(-1).movedim(0, -1))
        if return_states:
            states.append(hb.movedim(0, -1))
    y = torch.cat(ys, dim=-1)
    if Dskip is not None:
        y = y + u * Dskip.unsqueeze(-1)
    return (y, torch.cat(states, dim=-1)) if return_states else y


def scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, Dskip: Optional[Tensor] = None,
                   *, return_states: bool = False):
    """Closed form with an explicit ``[L, L]`` decay matrix per channel and state (tests only; O(L^2) memory)."""
    log_a = delta.unsqueeze(-2) * A.unsqueeze(-1)  # [b, K, D, N, L]
    cum = torch.cumsum(log_a, dim=-1)
    diff = cum.unsqueeze(-1) - cum.unsqueeze(-2)  # [..., t, s] = P_t - P_s
    length = u.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=u.device).tril()
    decay = torch.exp(diff.masked_fill(~causal, float("-inf")))
    dBx = (delta * u).unsqueeze(-2) * B.unsqueeze(2)
    h = (decay * dBx.unsqueeze(-2)).sum(-1)
    y = _readout(h, u, C, Dskip)
    return (y, h) if return_states else y


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, Dskip: Optional[Tensor] = None,
                   *, mode: ScanMode = "auto", chunk: int = 32, return_states: bool = False):
    """Dispatch: ``auto`` is sequential on a CPU in eager mode, chunked on a GPU and while tracing/exporting."""
    if mode == "auto":
        tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        mode = "chunked" if (u.is_cuda or tracing) else "sequential"
    if mode == "chunked":
        return scan_chunked(u, delta, A, B, C, Dskip, chunk=chunk, return_states=return_states)
    if mode == "sequential":
        return scan_sequential(u, delta, A, B, C, Dskip, return_states=return_states)
    raise ValueError(f"selective_scan: mode must be 'auto', 'sequential' or 'chunked', got {mode!r}")
