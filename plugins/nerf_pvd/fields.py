"""Radiance fields in pure PyTorch (CPU and CUDA, no tiny-cuda-nn), with the two-part interface of PVD.

Progressive Volume Distillation (Fang et al., AAAI 2023, arXiv 2211.15977) converts between
architectures by matching what every field computes on the way to a colour:

* the *volume feature*: the pre-activation density and a geometry feature vector,
  ``feature = [sigma_pre, geo_1 .. geo_F]`` (``None`` for the dense SH grid, which has none);
* the pre-activation density ``sigma_pre`` (density = ``trunc_exp(sigma_pre)``) and the colour.

Fields (paper sizes in brackets; the defaults here are small enough for a CPU):

* :class:`MLPField` — NeRF MLP on a positional encoding [10 frequencies, 8 x 256, skip at 4];
* :class:`HashGridField` — Instant-NGP multiresolution hash grid + small MLPs [16 levels, 2^19];
* :class:`TensoRFVMField` — TensoRF vector-matrix factors: density ``sum_r P_r(xy) L_r(z) + ...``
  [rank 16 x 3 density, 48 x 3 appearance, resolution 300];
* :class:`DenseSHGridField` — Plenoxels-style dense grid of density + spherical-harmonic
  coefficients [128^3, SH degree 3; here at most degree 2].

Choices the paper leaves open: every field uses the same density activation (``trunc_exp``, an
exponential clamped at 15 in value and gradient) so that pre-activation densities are comparable across
architectures; the geometry feature has ``geo_feat_dim`` = 15 channels in every field that has one;
the TensoRF geometry feature is a linear map of its appearance features (PVD's ``basis_mat``);
view directions are encoded with 4 positional frequencies for the MLP colour heads.
Points are expected inside the cube ``[-bound, bound]^3``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FieldOutput", "RadianceField", "MLPField", "HashGridField", "TensoRFVMField", "DenseSHGridField",
           "trunc_exp", "positional_encoding", "sh_basis"]


_EXP_MAX = 15.0


class _TruncExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x.clamp(max=_EXP_MAX))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(-15.0, _EXP_MAX))


def trunc_exp(x: Tensor) -> Tensor:
    """``exp(min(x, 15))``, its gradient computed from ``exp(clamp(x, -15, 15))`` (Instant-NGP's activation).

    Instant-NGP clamps only the gradient; the forward is clamped here too: ``exp(x)`` is ``inf`` in float32 for
    ``x > 88`` (an MLP's density spikes there early in training) and ``inf * 0`` (a zero sample spacing, which rays
    that graze the scene cube produce) is NaN. A density of ``e^15`` already makes any sample opaque, and above the
    clamp the gradient still flows as if it were ``e^15`` (straight through).
    """
    return _TruncExp.apply(x)


def positional_encoding(x: Tensor, n_freqs: int) -> Tensor:
    """``[x, sin(2^k x), cos(2^k x)]`` for k < n_freqs; ``[..., D] -> [..., D (1 + 2 n_freqs)]``."""
    if n_freqs == 0:
        return x
    freqs = 2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)
    xb = (x[..., None, :] * freqs[:, None]).flatten(-2)
    return torch.cat([x, torch.sin(xb), torch.cos(xb)], dim=-1)


def sh_basis(d: Tensor, degree: int) -> Tensor:
    """Real spherical harmonics up to ``degree`` (0..2) of unit directions; ``[N, 3] -> [N, (degree+1)^2]``."""
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree >= 1:
        out += [-0.4886025119029199 * y, 0.4886025119029199 * z, -0.4886025119029199 * x]
    if degree >= 2:
        out += [1.0925484305920792 * x * y, -1.0925484305920792 * y * z, 0.31539156525252005 * (2 * z * z - x * x - y * y),
                -1.0925484305920792 * x * z, 0.5462742152960396 * (x * x - y * y)]
    if degree > 2:
        raise ValueError(f"sh_basis: degree must be 0, 1 or 2, got {degree!r}")
    return torch.stack(out, dim=-1)


class FieldOutput(NamedTuple):
    """What a field returns for N points (and their view directions)."""

    sigma_pre: Tensor
    """``[N]`` density before the activation (density = ``trunc_exp(sigma_pre)``)."""
    feature: Optional[Tensor]
    """``[N, 1 + geo_feat_dim]`` volume feature ``[sigma_pre, geo]``; ``None`` when the field has none."""
    rgb: Tensor
    """``[N, 3]`` colour in [0, 1]."""


def _mlp(d_in: int, width: int, depth: int, d_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else width, width), nn.ReLU()]
    layers.append(nn.Linear(width if depth else d_in, d_out))
    return nn.Sequential(*layers)


class RadianceField(nn.Module):
    """Base class: ``forward(x [N,3], d [N,3]) -> FieldOutput``; ``density_pre(x)`` alone for export/occupancy."""

    has_feature: bool = True

    def __init__(self, bound: float, geo_feat_dim: int):
        super().__init__()
        self.bound = float(bound)
        self.geo_feat_dim = int(geo_feat_dim)

    def normalise(self, x: Tensor) -> Tensor:
        """World points -> ``[-1, 1]^3``."""
        return x / self.bound

    def volume_feature(self, x: Tensor) -> Tensor:
        """``[N, 1 + geo_feat_dim]``; column 0 is ``sigma_pre``."""
        raise NotImplementedError

    def colour(self, geo: Tensor, d: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, d: Tensor) -> FieldOutput:
        feat = self.volume_feature(x)
        return FieldOutput(feat[:, 0], feat, self.colour(feat[:, 1:], d))

    def density_pre(self, x: Tensor) -> Tensor:
        return self.volume_feature(x)[:, 0]

    def density_regulariser(self) -> Tensor:
        """L1 term on density parameters (used by TensoRF students, PVD's 1e-4 L1); zero by default."""
        return torch.zeros((), device=next(self.parameters()).device)


class _ColourHead(nn.Module):
    """Colour MLP on ``[geo, PE(d, 4)]`` -> sigmoid RGB."""

    def __init__(self, geo_feat_dim: int, width: int, depth: int, dir_freqs: int = 4):
        super().__init__()
        self.dir_freqs = dir_freqs
        self.net = _mlp(geo_feat_dim + 3 * (1 + 2 * dir_freqs), width, depth, 3)

    def forward(self, geo: Tensor, d: Tensor) -> Tensor:
        return torch.sigmoid(self.net(torch.cat([geo, positional_encoding(d, self.dir_freqs)], dim=-1)))


class MLPField(RadianceField):
    """NeRF MLP: ``PE(x)`` -> ``depth`` x ``width`` ReLU layers (input re-injected at ``depth // 2``) -> ``[sigma_pre, geo]``."""

    def __init__(self, bound: float = 1.0, geo_feat_dim: int = 15, width: int = 64, depth: int = 4, pos_freqs: int = 8,
                 colour_width: int = 64, colour_depth: int = 1):
        super().__init__(bound, geo_feat_dim)
        self.pos_freqs = pos_freqs
        d_in = 3 * (1 + 2 * pos_freqs)
        self.skip = depth // 2
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width + (d_in if i == self.skip else 0), width) for i in range(depth))
        self.out = nn.Linear(width, 1 + geo_feat_dim)
        self.head = _ColourHead(geo_feat_dim, colour_width, colour_depth)

    def volume_feature(self, x: Tensor) -> Tensor:
        enc = positional_encoding(self.normalise(x), self.pos_freqs)
        h = enc
        for i, layer in enumerate(self.layers):
            if i == self.skip and i > 0:
                h = torch.cat([h, enc], dim=-1)
            h = F.relu(layer(h))
        return self.out(h)

    def colour(self, geo: Tensor, d: Tensor) -> Tensor:
        return self.head(geo, d)


_PRIMES = (1, 2654435761, 805459861)


class HashGridField(RadianceField):
    """Instant-NGP: ``levels`` hash tables of ``2^log2_table`` x ``feats_per_level``, resolutions ``base_res`` .. ``max_res``.

    Levels whose dense grid fits the table are indexed directly (no collisions), the others by the
    spatial hash ``xor_i(x_i * pi_i) mod T``; the 8 corners are blended trilinearly.
    """

    def __init__(self, bound: float = 1.0, geo_feat_dim: int = 15, levels: int = 8, feats_per_level: int = 2,
                 log2_table: int = 15, base_res: int = 8, max_res: int = 256, width: int = 64, colour_width: int = 64,
                 colour_depth: int = 1):
        super().__init__(bound, geo_feat_dim)
        self.levels, self.table = levels, 2 ** log2_table
        growth = math.exp((math.log(max_res) - math.log(base_res)) / max(1, levels - 1))
        self.register_buffer("resolutions", torch.tensor([math.floor(base_res * growth ** i) for i in range(levels)]),
                             persistent=False)
        self.n_dense = int(((self.resolutions + 1) ** 3 <= self.table).sum())  # a prefix: resolutions grow
        self.batch_levels: Optional[bool] = None  # None: batched over levels on CUDA, level by level on a CPU
        self.embeddings = nn.Parameter(torch.empty(levels, self.table, feats_per_level).uniform_(-1e-4, 1e-4))
        self.sigma_net = _mlp(levels * feats_per_level, width, 1, 1 + geo_feat_dim)
        self.head = _ColourHead(geo_feat_dim, colour_width, colour_depth)

    def _lookup(self, u: Tensor, lo: int, hi: int, dense: bool) -> Tensor:
        """Features ``[N, hi - lo, F]`` of levels ``lo .. hi-1`` (all dense-indexed or all hashed), batched over levels."""
        n, levels = u.shape[0], hi - lo
        res = self.resolutions[lo:hi]
        pos = u[:, None, :] * res[None, :, None].to(u.dtype)  # [N, L, 3]
        base = torch.minimum(pos.floor().long(), (res - 1)[None, :, None])
        frac = pos - base
        w = torch.stack([1 - frac, frac], -1)  # [N, L, 3, 2] per-axis weights of the lower/upper corner
        w = (w[:, :, 0, :, None, None] * w[:, :, 1, None, :, None] * w[:, :, 2, None, None, :]).reshape(n, levels, 8)
        c = torch.stack([base, base + 1], -1)  # [N, L, 3, 2]
        cx, cy, cz = c[:, :, 0, :, None, None], c[:, :, 1, None, :, None], c[:, :, 2, None, None, :]
        if dense:
            side = (res + 1)[None, :, None, None, None]
            flat = (cx * side + cy) * side + cz
        else:
            flat = ((cx * _PRIMES[0]) ^ (cy * _PRIMES[1]) ^ (cz * _PRIMES[2])) % self.table
        flat = flat.reshape(n, levels, 8) + (torch.arange(lo, hi, device=u.device) * self.table)[None, :, None]
        emb = self.embeddings.reshape(self.levels * self.table, -1)[flat.reshape(-1, 8)]  # [N L, 8, F]
        return torch.bmm(w.reshape(-1, 1, 8), emb).reshape(n, levels, -1)

    def encode(self, x: Tensor) -> Tensor:
        """``[N, 3]`` points -> ``[N, levels * feats_per_level]`` (level-major).

        The coarse levels whose dense grid fits the table come first (resolutions grow), so on a GPU the
        lookup is two batched gathers, one over the dense-indexed levels and one over the hashed ones (few
        kernel launches); on a CPU one level at a time is faster (``batch_levels`` overrides the choice).
        """
        u = (self.normalise(x).clamp(-1, 1) + 1) / 2  # [N, 3] in [0, 1]
        batched = u.is_cuda if self.batch_levels is None else self.batch_levels
        groups = [(0, self.n_dense, True), (self.n_dense, self.levels, False)] if batched else \
            [(lvl, lvl + 1, lvl < self.n_dense) for lvl in range(self.levels)]
        return torch.cat([self._lookup(u, lo, hi, dense) for lo, hi, dense in groups if hi > lo], 1).reshape(u.shape[0], -1)

    def volume_feature(self, x: Tensor) -> Tensor:
        return self.sigma_net(self.encode(x))

    def colour(self, geo: Tensor, d: Tensor) -> Tensor:
        return self.head(geo, d)


def _grid_sample_planes(planes: Tensor, coords: Tensor) -> Tensor:
    """Bilinear lookup of ``planes [3, C, R, R]`` at ``coords [3, N, 2]`` -> ``[3, C, N]``."""
    return F.grid_sample(planes, coords[:, :, None, :], mode="bilinear", align_corners=True)[..., 0]


class TensoRFVMField(RadianceField):
    """TensoRF vector-matrix field: each of the 3 axis pairs has a plane ``P(res x res)`` and a line ``L(res)``.

    Density ``sigma_pre = sum_{m, r} P^m_r(x_pair) L^m_r(x_axis) + density_shift``; appearance features
    ``A = B (P^m_r L^m_r)_{m, r}`` (``B``: ``3 app_rank -> app_dim``); the geometry feature is a linear map of
    ``A`` to 15 channels (PVD's ``basis_mat``) and the colour an MLP on ``[geo, PE(d)]``, as in the other fields.
    """

    _PAIRS = ((0, 1), (0, 2), (1, 2))
    _AXES = (2, 1, 0)

    def __init__(self, bound: float = 1.0, geo_feat_dim: int = 15, resolution: int = 64, density_rank: int = 8,
                 app_rank: int = 16, app_dim: int = 27, colour_width: int = 64, colour_depth: int = 1,
                 density_shift: float = -1.0):
        super().__init__(bound, geo_feat_dim)
        self.density_shift = density_shift
        self.density_planes = nn.Parameter(0.1 * torch.randn(3, density_rank, resolution, resolution))
        self.density_lines = nn.Parameter(0.1 * torch.randn(3, density_rank, resolution, 1))
        self.app_planes = nn.Parameter(0.1 * torch.randn(3, app_rank, resolution, resolution))
        self.app_lines = nn.Parameter(0.1 * torch.randn(3, app_rank, resolution, 1))
        self.basis = nn.Linear(3 * app_rank, app_dim, bias=False)
        self.geo = nn.Linear(app_dim, geo_feat_dim)
        self.head = _ColourHead(geo_feat_dim, colour_width, colour_depth)

    def _factors(self, planes: Tensor, lines: Tensor, u: Tensor) -> Tensor:
        pc = torch.stack([u[:, list(p)] for p in self._PAIRS])  # [3, N, 2]
        lc = torch.stack([torch.stack([torch.zeros_like(u[:, a]), u[:, a]], -1) for a in self._AXES])
        return _grid_sample_planes(planes, pc) * _grid_sample_planes(lines, lc)  # [3, R, N]

    def _appearance(self, u: Tensor) -> Tensor:
        f = self._factors(self.app_planes, self.app_lines, u)
        return self.basis(f.permute(2, 0, 1).reshape(u.shape[0], -1))

    def volume_feature(self, x: Tensor) -> Tensor:
        u = self.normalise(x).clamp(-1, 1)
        sigma = self._factors(self.density_planes, self.density_lines, u).sum((0, 1)) + self.density_shift
        return torch.cat([sigma[:, None], self.geo(self._appearance(u))], dim=-1)

    def colour(self, geo: Tensor, d: Tensor) -> Tensor:
        return self.head(geo, d)

    def density_pre(self, x: Tensor) -> Tensor:
        u = self.normalise(x).clamp(-1, 1)
        return self._factors(self.density_planes, self.density_lines, u).sum((0, 1)) + self.density_shift

    def density_regulariser(self) -> Tensor:
        return self.density_planes.abs().mean() + self.density_lines.abs().mean()


class DenseSHGridField(RadianceField):
    """Plenoxels-style dense grid: per voxel ``sigma_pre`` and ``3 (degree+1)^2`` SH coefficients, trilinear lookup.

    It has no intermediate volume feature (``feature`` is ``None``), so PVD skips stage 1 with it.
    """

    has_feature = False

    def __init__(self, bound: float = 1.0, geo_feat_dim: int = 15, resolution: int = 48, sh_degree: int = 2,
                 density_init: float = -1.0):
        super().__init__(bound, geo_feat_dim)
        self.sh_degree = sh_degree
        n_sh = (sh_degree + 1) ** 2
        self.density = nn.Parameter(torch.full((1, 1, resolution, resolution, resolution), float(density_init)))
        self.sh = nn.Parameter(torch.zeros(1, 3 * n_sh, resolution, resolution, resolution))

    def _lookup(self, grid: Tensor, x: Tensor) -> Tensor:
        u = self.normalise(x).clamp(-1, 1)
        # grid_sample's (x, y, z) index the last three dims (W, H, D) of the volume
        return F.grid_sample(grid, u[None, :, None, None, :], mode="bilinear", align_corners=True)[0, :, :, 0, 0].T

    def density_pre(self, x: Tensor) -> Tensor:
        return self._lookup(self.density, x)[:, 0]

    def forward(self, x: Tensor, d: Tensor) -> FieldOutput:
        sigma = self.density_pre(x)
        coeffs = self._lookup(self.sh, x).reshape(x.shape[0], 3, -1)
        rgb = torch.sigmoid((coeffs * sh_basis(d, self.sh_degree)[:, None, :]).sum(-1))
        return FieldOutput(sigma, None, rgb)
