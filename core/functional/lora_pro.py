"""LoRA-Pro: adjust the gradients of LoRA's factors so the equivalent low-rank update best fits the full gradient.

Wang et al., "LoRA-Pro: Are Low-Rank Adapters Properly Optimized?" (arXiv 2407.18242). With
``dW = s B A`` (``B: [m, r]``, ``A: [r, n]``) one SGD step on ``(A, B)`` moves ``W`` by the
*equivalent gradient* ``g~ = s (B g_A + g_B A)``. Given the full gradient ``g`` (only ``B^T g`` and
``g A^T`` are needed, and autograd gives both: ``grad_A = s B^T g``, ``grad_B = s g A^T``), the
minimiser of ``||g~ - g||_F`` is

    g_A = (1/s) (B^T B)^-1 B^T g + X A,
    g_B = (1/s) (I - B (B^T B)^-1 B^T) g A^T (A A^T)^-1 - B X,

for any ``r x r`` matrix ``X`` (it cancels in ``g~``); ``X`` is chosen, as in the paper, to keep
``(g_A, g_B)`` closest to the plain LoRA gradients, the solution of the Sylvester equation
``B^T B X + X A A^T = -(1/s) (B^T B)^-1 B^T g A^T``. Choices left open: ``B^T B`` and ``A A^T``
are damped by ``damping * trace / r`` (``+1e-12``) so a zero ``B`` (LoRA's start) is well defined,
and the Sylvester equation is solved through the eigendecompositions of the two symmetric matrices.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["equivalent_gradient", "adjusted_gradients", "solve_sylvester_spd"]


def equivalent_gradient(lora_a: Tensor, lora_b: Tensor, grad_a: Tensor, grad_b: Tensor, scale: float) -> Tensor:
    """``s (B g_A + g_B A)``, ``[m, n]``: how an SGD step on the factors moves ``W``."""
    return scale * (lora_b @ grad_a + grad_b @ lora_a)


def _damped_gram(matrix: Tensor, damping: float) -> Tensor:
    r = matrix.shape[0]
    return matrix + (damping * float(matrix.diagonal().sum()) / r + 1e-12) * torch.eye(r, dtype=matrix.dtype, device=matrix.device)


def solve_sylvester_spd(left: Tensor, right: Tensor, rhs: Tensor) -> Tensor:
    """``X`` with ``left X + X right = rhs`` for symmetric positive definite ``left`` and ``right``."""
    lam, u = torch.linalg.eigh(left)
    mu, v = torch.linalg.eigh(right)
    return u @ ((u.t() @ rhs @ v) / (lam[:, None] + mu[None, :])) @ v.t()


def adjusted_gradients(
    lora_a: Tensor, lora_b: Tensor, bt_g: Tensor, g_at: Tensor, scale: float, *, damping: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """LoRA-Pro's ``(g_A, g_B)`` from ``B^T g`` (``[r, n]``) and ``g A^T`` (``[m, r]``); computed in float32 or wider."""
    dtype = lora_a.dtype
    work = torch.promote_types(dtype, torch.float32)
    a, b, bt_g, g_at = lora_a.to(work), lora_b.to(work), bt_g.to(work), g_at.to(work)
    btb = _damped_gram(b.t() @ b, damping)
    aat = _damped_gram(a @ a.t(), damping)
    grad_a = torch.linalg.solve(btb, bt_g) / scale
    bt_g_at = bt_g @ a.t()  # B^T g A^T, [r, r]
    projected = g_at - b @ torch.linalg.solve(btb, bt_g_at)  # (I - P_B) g A^T
    grad_b = torch.linalg.solve(aat, projected.t()).t() / scale  # ... (A A^T)^-1
    x = solve_sylvester_spd(btb, aat, -torch.linalg.solve(btb, bt_g_at) / scale)
    return (grad_a + x @ a).to(dtype), (grad_b - b @ x).to(dtype)
