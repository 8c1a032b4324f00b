"""Selective scan: sequential and chunked-parallel against the closed-form reference; SS2D parameter formula."""

import pytest
import torch

from lowrank_vision.plugins.multispectral_det.scan import affine_scan, scan_chunked, scan_reference, scan_sequential, selective_scan
from lowrank_vision.plugins.multispectral_det.ss2d import SS2D, VSSBlock, factor_rank, low_rank_from, ss2d_param_count


def _inputs(L, b=2, K=4, D=3, N=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, K, D, L, generator=g, dtype=torch.float64)
    delta = torch.nn.functional.softplus(torch.randn(b, K, D, L, generator=g, dtype=torch.float64))
    A = -torch.rand(K, D, N, generator=g, dtype=torch.float64) * 3 - 0.1
    B = torch.randn(b, K, N, L, generator=g, dtype=torch.float64)
    C = torch.randn(b, K, N, L, generator=g, dtype=torch.float64)
    Ds = torch.randn(K, D, generator=g, dtype=torch.float64)
    return u, delta, A, B, C, Ds


@pytest.mark.parametrize("L,chunk", [(1, 4), (7, 4), (37, 4), (64, 8), (100, 32)])
def test_scans_match_reference(L, chunk):
    args = _inputs(L)
    y_ref, h_ref = scan_reference(*args, return_states=True)
    y_seq, h_seq = scan_sequential(*args, return_states=True)
    y_chk, h_chk = scan_chunked(*args, chunk=chunk, return_states=True)
    assert y_ref.shape == (2, 4, 3, L) and h_ref.shape == (2, 4, 3, 5, L)
    torch.testing.assert_close(y_seq, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y_chk, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_chk, h_seq, rtol=1e-10, atol=1e-10)


def test_chunked_gradients_match_sequential():
    args = [t.clone().requires_grad_(True) for t in _inputs(29)]
    scan_sequential(*args).square().sum().backward()
    g_seq = [t.grad.clone() for t in args]
    for t in args:
        t.grad = None
    scan_chunked(*args, chunk=4).square().sum().backward()
    for a, b in zip(g_seq, [t.grad for t in args]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_affine_scan_long_sequence_is_finite_where_cumsum_form_overflows():
    # decays ~exp(-3) per step over 600 steps: exp(+1800) would overflow in a cumsum/exp(-S) form
    a = torch.full((1, 600), 0.05)
    b = torch.ones(1, 600)
    h = affine_scan(a, b, chunk=16)
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h[0, -1], torch.tensor(1 / 0.95), rtol=1e-5, atol=1e-6)


def test_auto_mode_and_bad_mode():
    args = [t.float() for t in _inputs(9)]
    torch.testing.assert_close(selective_scan(*args), scan_sequential(*args))
    with pytest.raises(ValueError, match="mode must be"):
        selective_scan(*args, mode="fast")


@pytest.mark.parametrize("channels,ratio", [(16, 1.0), (32, 0.5), (48, 0.65)])
def test_ss2d_parameter_count_matches_formula(channels, ratio):
    m = SS2D(channels, d_state=8, rank_ratio=ratio)
    assert sum(p.numel() for p in m.parameters()) == ss2d_param_count(channels, 8, 2.0, ratio)


def test_low_rank_halves_factorised_parameters_and_ranks():
    assert factor_rank(128, 32, 0.5) == 12  # floor(0.5 * 4096 / 160)
    full, low = ss2d_param_count(64), ss2d_param_count(64, rank_ratio=0.5)
    assert 0.3 < low / full < 0.5  # matrices halved, and half the state modes (fewer B/C rows, A columns)
    with pytest.raises(ValueError, match="rank_ratio must be in"):
        factor_rank(4, 4, 0.0)
    with pytest.raises(ValueError, match="targets must be a subset"):
        SS2D(8, targets=("qkv",))


def test_ss2d_modes_agree_and_low_rank_from_teacher_is_close():
    torch.manual_seed(0)
    teacher = SS2D(16, d_state=4)
    x = torch.randn(2, 16, 5, 7)
    y_seq = teacher(x)
    teacher.scan_mode = "chunked"
    teacher.chunk = 4
    torch.testing.assert_close(teacher(x), y_seq, rtol=1e-5, atol=1e-5)
    exact = low_rank_from(teacher, 1.0)  # ratio 1: dense copy, same function
    torch.testing.assert_close(exact(x), y_seq, rtol=1e-5, atol=1e-5)
    student = low_rank_from(teacher, 0.5)
    assert student.in_proj.rank == factor_rank(64, 16, 0.5)
    block = VSSBlock(16, 4, 2.0, 0.5)
    assert block(x).shape == x.shape


def test_state_truncation_keeps_teacher_function_when_dropped_modes_are_silent():
    torch.manual_seed(1)
    teacher = SS2D(16, d_state=8)
    with torch.no_grad():  # B rows of modes 4..7 zero: those modes never get input
        R = teacher.dt_rank
        teacher.x_proj.weight[:, R + 4:R + 8] = 0
    student = low_rank_from(teacher, 0.5, targets=("state",))
    assert student.d_state == 4 and teacher.d_state == 8
    x = torch.randn(1, 16, 4, 6)
    torch.testing.assert_close(student(x), teacher(x), rtol=1e-5, atol=1e-5)
    teacher.record = student.record = True
    teacher(x), student(x)
    assert teacher.last_states.shape == (1, 4, 32, 8, 24) and student.last_states.shape == (1, 4, 32, 4, 24)


def test_state_alignment_pairs_each_student_mode_with_the_teacher_mode_it_was_cut_from():
    from lowrank_vision.plugins.multispectral_det.ss2d import teacher_state_projection

    torch.manual_seed(2)
    teacher = SS2D(16, d_state=8)
    student = low_rank_from(teacher, 0.5, targets=("state",))  # only the state is cut: every kept mode runs as in the teacher
    teacher.record = student.record = True
    x = torch.randn(1, 16, 4, 6)
    teacher(x), student(x)
    target = teacher_state_projection(teacher.last_states, student.d_state)
    torch.testing.assert_close(student.last_states, target, rtol=1e-5, atol=1e-6)  # P picks the right modes: zero state loss
    wrong = teacher.last_states[..., -student.d_state:, :]  # the dropped modes: a P that pointed there would not match
    assert (student.last_states - wrong).abs().max() > 1e-2
    assert (student.last_output - teacher.last_output).abs().max() > 1e-4  # the output still lost the dropped (fast) modes
