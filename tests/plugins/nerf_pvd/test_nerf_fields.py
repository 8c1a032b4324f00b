"""Fields, renderer and metrics of nerf_pvd: shapes, analytic renders, numbers."""

import math

import pytest
import torch

from lowrank_vision.datasets.nerf import camera_rays
from lowrank_vision.plugins.nerf_pvd.config import FIELD_KINDS, FieldConfig
from lowrank_vision.plugins.nerf_pvd.fields import HashGridField, RadianceField, positional_encoding, sh_basis, trunc_exp
from lowrank_vision.plugins.nerf_pvd.metrics import psnr, ssim
from lowrank_vision.plugins.nerf_pvd.model import build_field
from lowrank_vision.plugins.nerf_pvd.render import RenderConfig, near_far_cube, render_rays

torch.set_num_threads(1)


def _rays(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    o = torch.tensor([0.0, 0.0, 3.0]).repeat(n, 1)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g) * 0.15 + torch.tensor([0.0, 0.0, -1.0]), dim=-1)
    return o, d


@pytest.mark.parametrize("kind", FIELD_KINDS)
def test_every_field_renders_the_same_batch_shapes(kind):
    torch.manual_seed(0)
    field = build_field(FieldConfig(kind=kind, hash_log2_table=12, tensorf_resolution=16, grid_resolution=12))
    o, d = _rays(64)
    cfg = RenderConfig(n_coarse=8, n_fine=8)
    out = render_rays(field, o, d, cfg, training=True)
    assert out["rgb"].shape == (64, 3) and out["acc"].shape == (64,) and out["depth"].shape == (64,)
    assert out["sigma_pre"].shape == (64, 16) and out["point_rgb"].shape == (64, 16, 3)
    if kind == "grid":
        assert out["feature"] is None and not field.has_feature
    else:
        assert out["feature"].shape == (64, 16, 16)  # 1 + geo_feat_dim = 16, as in PVD
        assert torch.equal(out["feature"][..., 0], out["sigma_pre"])
    assert torch.all((out["rgb"] >= 0) & (out["rgb"] <= 1))
    out["rgb"].sum().backward()
    assert all(p.grad is not None for p in field.parameters() if p.requires_grad)


class _Ball(RadianceField):
    """Opaque ball of radius 0.5 at the origin, red; analytic reference for the renderer."""

    has_feature = False

    def __init__(self):
        super().__init__(1.0, 15)
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def density_pre(self, x):
        return torch.where(x.norm(dim=-1) < 0.5, torch.tensor(8.0), torch.tensor(-20.0)) + self.dummy

    def forward(self, x, d):
        from lowrank_vision.plugins.nerf_pvd.fields import FieldOutput

        return FieldOutput(self.density_pre(x), None, torch.tensor([1.0, 0.0, 0.0]).expand(x.shape[0], 3))


def test_renderer_matches_an_analytic_ball():
    c2w = torch.eye(4)
    c2w[2, 3] = 3.0
    o, d = camera_rays(c2w, 9, 9, 9.0, 9.0, 4.5, 4.5)
    assert torch.allclose(d[40], torch.tensor([0.0, 0.0, -1.0]))  # centre pixel looks down -z (OpenGL)
    out = render_rays(_Ball(), o, d, RenderConfig(n_coarse=64, n_fine=64))
    assert abs(out["depth"][40].item() - 2.5) < 0.03  # hits the ball at z = 0.5
    assert out["acc"][40].item() > 0.999 and torch.allclose(out["rgb"][40], torch.tensor([1.0, 0.0, 0.0]), atol=1e-3)
    corner = out["acc"][0].item()  # corner ray misses the ball: background white
    assert corner < 1e-3 and torch.allclose(out["rgb"][0], torch.ones(3), atol=1e-3)


def test_near_far_cube_and_misses():
    o = torch.tensor([[0.0, 0.0, 3.0], [5.0, 5.0, 3.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    near, far, hit = near_far_cube(o, d, 1.0)
    assert hit.tolist() == [True, False] and near[0].item() == pytest.approx(2.0) and far[0].item() == pytest.approx(4.0)


def test_encodings_and_activation_numbers():
    x = torch.tensor([[0.5, -0.25, 1.0]])
    assert positional_encoding(x, 3).shape == (1, 21)
    y = torch.tensor([20.0], requires_grad=True)
    trunc_exp(y).backward()
    assert y.grad.item() == pytest.approx(math.exp(15.0), rel=1e-4)  # gradient clamped at 15
    dirs = torch.nn.functional.normalize(torch.randn(20000, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    b = sh_basis(dirs, 2)
    gram = (b.T @ b) * 4 * math.pi / dirs.shape[0]  # Monte-Carlo inner products over the sphere: ~identity
    assert torch.allclose(gram, torch.eye(9), atol=0.06)


def test_psnr_ssim_numbers():
    a = torch.full((16, 16, 3), 0.5)
    assert psnr(a + 0.1, a) == pytest.approx(20.0, abs=1e-4)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    noisy = (a + 0.2 * torch.randn(16, 16, 3, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert ssim(noisy, a) < 0.5


def test_field_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"FieldConfig.kind must be one of"):
        FieldConfig(kind="nerfacto")
    with pytest.raises(ValueError, match=r"FieldConfig.grid_sh_degree must be 0, 1 or 2, got 3"):
        FieldConfig(grid_sh_degree=3)


def _hash_encode_one_level_at_a_time(f: HashGridField, x):
    """Reference: Instant-NGP's lookup written level by level with Python ints (dense index or spatial hash)."""
    u = (f.normalise(x).clamp(-1, 1) + 1) / 2
    out = []
    for lvl in range(f.levels):
        res = int(f.resolutions[lvl])
        pos = u * res
        base = pos.floor().long().clamp(max=res - 1)
        frac = pos - base
        feats = 0
        for corner in range(8):
            bits = [(corner >> k) & 1 for k in (2, 1, 0)]
            idx = base + torch.tensor(bits)
            w = torch.prod(torch.stack([frac[:, k] if b else 1 - frac[:, k] for k, b in enumerate(bits)]), 0)
            if (res + 1) ** 3 <= f.table:
                flat = (idx[:, 0] * (res + 1) + idx[:, 1]) * (res + 1) + idx[:, 2]
            else:
                flat = (idx[:, 0] * 1 ^ idx[:, 1] * 2654435761 ^ idx[:, 2] * 805459861) % f.table
            feats = feats + w[:, None] * f.embeddings[lvl][flat]
        out.append(feats)
    return torch.cat(out, -1)


def test_batched_hash_lookup_equals_the_level_by_level_reference():
    torch.manual_seed(0)
    f = HashGridField(levels=6, log2_table=10, base_res=4, max_res=64)  # levels 4..~10 dense, the finer ones hashed
    with torch.no_grad():
        f.embeddings.normal_()
    assert 0 < f.n_dense < f.levels
    x = torch.rand(300, 3) * 2.2 - 1.1  # some points outside the cube: clamped to its faces
    want = _hash_encode_one_level_at_a_time(f, x)
    grads = []
    for batched in (False, True):  # the CPU path and the GPU path (two gathers over all levels)
        f.batch_levels = batched
        f.zero_grad()
        got = f.encode(x)
        assert torch.allclose(got, want, atol=1e-5)
        (got ** 2).sum().backward()
        grads.append(f.embeddings.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0


def _grazing_rays():
    """Rays that clip a cube edge (~1.4e-6 inside it): their float32 samples coincide, so some deltas are exactly 0."""
    d = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, -1.0]]), dim=-1).repeat(4, 1)
    o = torch.tensor([-1.000001, 0.0, 3.0]).repeat(4, 1) + torch.tensor([0.0, 0.1, 0.0]) * torch.arange(4.0)[:, None]
    return o, d


def test_huge_density_with_zero_deltas_gives_finite_weights():
    # exp(100) is inf in float32 and inf * 0 (a zero delta) was NaN: the weights must stay finite (the GPU run's NaN)
    from lowrank_vision.plugins.nerf_pvd.render import _deltas, _weights

    sigma = torch.tensor([[100.0, 100.0, 100.0], [-30.0, 95.0, 5.0]])
    deltas = torch.tensor([[0.0, 0.0, 0.1], [0.0, 0.0, 0.0]])
    w = _weights(sigma, deltas)
    assert torch.isfinite(w).all() and torch.isfinite(trunc_exp(torch.tensor([1e4]))).all()
    assert w[0].tolist() == pytest.approx([0.0, 0.0, 1.0], abs=1e-6)  # only the first point with a length is opaque
    o, d = _grazing_rays()
    t = torch.linspace(0, 1, 16).expand(4, 16) * 1.4e-6 + near_far_cube(o, d, 1.0)[0][:, None]
    assert (_deltas(t, near_far_cube(o, d, 1.0)[1]) == 0).any()  # such rays exist: float32 cannot separate the samples


def test_mlp_with_a_huge_density_init_trains_without_nan():
    torch.manual_seed(0)
    field = build_field(FieldConfig(kind="mlp", mlp_width=32, mlp_depth=2))
    with torch.no_grad():
        field.out.bias[0] = 100.0  # sigma_pre ~ 100 everywhere: exp overflows float32
    o, d = _rays(60)
    go, gd = _grazing_rays()
    o, d = torch.cat([o, go]), torch.cat([d, gd])
    target = torch.full((o.shape[0], 3), 0.25)
    opt = torch.optim.Adam(field.parameters(), lr=1e-3, eps=1e-15)
    for _ in range(3):
        out = render_rays(field, o, d, RenderConfig(n_coarse=16, n_fine=16), training=True)
        loss = torch.nn.functional.mse_loss(out["rgb"], target)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in field.parameters() if p.grad is not None)
        opt.step()
