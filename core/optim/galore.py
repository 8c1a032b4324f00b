"""GaLore and Fira optimizers (AdamW inside a low-rank projection of each gradient); math in ``core.functional.galore``.

Param groups as in the GaLore paper's code: a group with a ``rank`` key is projected, with
``update_proj_gap`` (steps between new bases), ``scale`` (multiplier of the projected-back update)
and ``projection="svd"|"dct"``. Other groups, and 1-D tensors (biases, norms) of a projected group,
get plain AdamW. ``rank`` is an int (absolute, clipped to the layer's shorter side) or a float in
``(0, 1]`` (a fraction of the shorter side). Convolution kernels are unfolded to
``[C_out, C_in * prod(k)]`` and the update is folded back by reshape (any kernel dimensionality).

The Adam moments live in the projected space and are kept across basis changes (as GaLore does).
State per projected tensor: ``exp_avg``/``exp_avg_sq`` of the projected shape and the basis ``[d, r]``
(SVD) or only the ``r`` selected DCT column indices (DCT; the DCT matrix of each size is built once
per optimizer, shared by every layer, and rebuilt on load since it is a pure function of the size).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import Tensor

from ..functional import galore as F_galore
from ..validate import is_int, is_number

__all__ = ["GaLore", "Fira"]

PROJECTIONS = ("svd", "dct")


def stateful_adam_direction(state: dict, grad: Tensor, step: int, betas: tuple[float, float], eps: float, key: str = "") -> Tensor:
    """The Adam direction of ``grad`` with its moments kept in ``state[key + "exp_avg"]`` / ``state[key + "exp_avg_sq"]``
    (zeros of ``grad``'s shape on first use); GaLore/Fira and LoRA-Pro share it."""
    if key + "exp_avg" not in state:
        state[key + "exp_avg"] = torch.zeros_like(grad)
        state[key + "exp_avg_sq"] = torch.zeros_like(grad)
    return F_galore.adam_direction(grad, state[key + "exp_avg"], state[key + "exp_avg_sq"], step, betas, eps)


def _check_group(group: dict) -> None:
    if "rank" not in group:
        return
    rank = group["rank"]
    if not is_number(rank) or rank <= 0 or (isinstance(rank, float) and rank > 1):
        raise ValueError(f"param group 'rank' must be an int >= 1 or a float fraction in (0, 1], got {rank!r}")
    gap = group.get("update_proj_gap")
    if not is_int(gap, 1):
        raise ValueError(f"param group 'update_proj_gap' must be an int >= 1, got {gap!r}")
    scale = group.get("scale")
    if not is_number(scale) or scale <= 0:
        raise ValueError(f"param group 'scale' must be a positive number, got {scale!r}")
    if group.get("projection") not in PROJECTIONS:
        raise ValueError(f"param group 'projection' must be one of {PROJECTIONS}, got {group.get('projection')!r}")


class GaLore(torch.optim.Optimizer):
    """AdamW with GaLore gradient projection on the groups that carry a ``rank``.

    >>> opt = GaLore([{"params": convs_and_linears, "rank": 0.25, "update_proj_gap": 200, "scale": 0.25,
    ...                "projection": "dct"}, {"params": others}], lr=1e-3)
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        update_proj_gap: int = 200,
        scale: float = 0.25,
        projection: str = "svd",
    ):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas!r}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        update_proj_gap=update_proj_gap, scale=scale, projection=projection, **self._extra_defaults())
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_group(group)
        self._dct_bases: dict[tuple, Tensor] = {}

    def _extra_defaults(self) -> dict:
        return {}

    # -- projection helpers ----------------------------------------------------------------------
    def dct_basis(self, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The shared orthonormal DCT-II matrix of size ``n`` (built once per size, dtype and device)."""
        key = (n, dtype, str(device))
        if key not in self._dct_bases:
            self._dct_bases[key] = F_galore.dct_matrix(n, dtype=dtype, device=device)
        return self._dct_bases[key]

    def _basis(self, group: dict, state: dict, matrix: Tensor, side: str, rank: int) -> Tensor:
        dim = matrix.shape[0] if side == "left" else matrix.shape[1]
        if (state["step"] - 1) % group["update_proj_gap"] == 0:  # steps 1, 1 + gap, 1 + 2 gap, ...
            if group["projection"] == "svd":
                state["basis"] = F_galore.svd_basis(matrix, rank, side)
            else:
                state["indices"] = F_galore.dct_select(matrix, self.dct_basis(dim, matrix.dtype, matrix.device), rank, side).tolist()
        if group["projection"] == "svd":
            return state["basis"].to(matrix.dtype)
        index = torch.tensor(state["indices"], device=matrix.device)
        return self.dct_basis(dim, matrix.dtype, matrix.device).index_select(1, index)

    def _residual_update(self, group: dict, state: dict, matrix: Tensor, low: Tensor, direction: Tensor, basis: Tensor,
                         side: str) -> Optional[Tensor]:
        """Extra full-rank term added to the projected-back update (none in GaLore; Fira's residual)."""
        return None

    # -- step --------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, betas, eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("GaLore does not support sparse gradients")
                state = self.state[p]
                projected = "rank" in group and p.dim() >= 2
                if not state:
                    state["step"] = 0
                state["step"] += 1
                if wd:
                    p.mul_(1 - lr * wd)
                if not projected:
                    direction = stateful_adam_direction(state, p.grad, state["step"], betas, eps)
                    p.add_(direction, alpha=-lr)
                    continue
                side = F_galore.projection_side(tuple(p.shape))
                matrix = F_galore.matricize(p.grad)
                basis = self._basis(group, state, matrix, side, F_galore.resolve_rank(group["rank"], tuple(p.shape)))
                low = F_galore.project(matrix, basis, side)
                direction = stateful_adam_direction(state, low, state["step"], betas, eps)
                update = F_galore.project_back(direction, basis, side)
                extra = self._residual_update(group, state, matrix, low, direction, basis, side)
                if extra is not None:
                    update = update + extra
                p.add_(update.view_as(p), alpha=-lr * group["scale"])
        return loss


class Fira(GaLore):
    """GaLore plus Fira's norm-scaled full-rank residual ``phi * (G - P P^T G)`` and its norm-growth limiter.

    ``limiter`` is the limiter's gamma (Fira uses 1.01); ``None`` turns the limiter off.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, update_proj_gap: int = 200, scale: float = 0.25, projection: str = "svd",
                 limiter: Optional[float] = 1.01):
        if limiter is not None and not limiter >= 1:
            raise ValueError(f"limiter must be a number >= 1 or None, got {limiter!r}")
        self._limiter = limiter
        super().__init__(params, lr, betas, eps, weight_decay, update_proj_gap=update_proj_gap, scale=scale, projection=projection)

    def _extra_defaults(self) -> dict:
        return {"limiter": self._limiter}

    def _residual_update(self, group, state, matrix, low, direction, basis, side):
        residual = matrix - F_galore.project_back(low, basis, side)
        scaled = residual * F_galore.fira_residual_scale(low, direction, side, group["eps"])
        if group["limiter"] is not None:
            scaled, state["residual_norm"] = F_galore.limit_norm_growth(scaled, state.get("residual_norm"), group["limiter"])
        return scaled
