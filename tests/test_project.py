"""vhack.project: gate arithmetic, the three arms, cin/null, the Adam leak and its fixes."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vhack.extract import VHack, random_basis
from vhack.project import (ADAM_AWARE, GATE_MODES, cin_null, cos_in, cout_update, make_optimizer, optimizer_step,
                           project_all, project_moments, project_one, project_update, snapshot)


def orth(k, r, seed=0):
    return random_basis({'x': (k, r)}, seed)['x']


def knobs(rs=(16, 24, 8), seed=0, grads=True):
    g = torch.Generator().manual_seed(seed)
    W = {f'm{i}': SimpleNamespace(name=f'm{i}', r=r, dS=nn.Parameter(torch.zeros(r)), dS_hack=nn.Parameter(torch.zeros(r)))
         for i, r in enumerate(rs)}
    if grads:
        for kb in W.values():
            kb.dS.grad = torch.randn(kb.r, generator=g)
            kb.dS_hack.grad = kb.dS.grad.clone()
    return W


VS = {'m0': orth(3, 16, 1), 'm1': orth(2, 24, 2)}


# ── one module ─────────────────────────────────────────────────────────────
CASES = [(k, r, s) for k, r in [(1, 4), (3, 16), (8, 64), (16, 16)] for s in range(3)]


@pytest.mark.parametrize('k, r, seed', CASES)
def test_gate_arithmetic(k, r, seed):
    V = orth(k, r, seed)
    g = torch.randn(r, generator=torch.Generator().manual_seed(100 + seed))
    c = V @ g
    gp, rem, cin, cout = project_one(g, V, 'one_sided')
    assert torch.allclose(rem, V.T @ (V @ rem), atol=1e-5)                 # removed ∈ span(V)
    assert torch.allclose(gp + rem, g, atol=1e-6)
    assert float(cout) < 1e-5                                             # cout = 0 for one_sided
    assert torch.allclose(V @ gp, c.clamp(max=0), atol=1e-5)
    assert float(cin) == pytest.approx(float(torch.relu(c).norm() / g.norm()), rel=1e-5)
    assert torch.allclose(V @ project_one(g, V, 'no_gate')[0], torch.zeros(k), atol=1e-5)
    assert torch.allclose(V @ project_one(g, V, 'reverse')[0], -c, atol=1e-5)
    for gm in GATE_MODES:
        gpm = project_one(g, V, gm, preserve_magnitude=True)[0]
        assert float(gpm.norm()) == pytest.approx(float(g.norm()), rel=1e-4)
        gp2, rem2, _, _ = project_one(g, V, gm, overshoot=0.5)
        assert torch.allclose(rem2, 0.5 * project_one(g, V, gm)[1], atol=1e-6)


def test_project_one_errors():
    V, g = orth(2, 8), torch.randn(8)
    with pytest.raises(ValueError, match="gate_mode='two_sided'"): project_one(g, V, 'two_sided')
    with pytest.raises(ValueError, match='overshoot=-1'): project_one(g, V, overshoot=-1)
    with pytest.raises(ValueError, match='not orthonormal'): project_one(g, 2 * V)
    with pytest.raises(ValueError, match=r'g has shape \(7,\)'): project_one(g[:7], V)


def test_relu_before_aggregating():
    V = orth(2, 8)
    g = V[0] - V[1]                                        # one axis hack-ward, one anti: a signed sum cancels
    _, _, cin, _ = project_one(g, V)
    assert float(cin) == pytest.approx(1 / math.sqrt(2), rel=1e-5)


# ── all modules ────────────────────────────────────────────────────────────
@pytest.mark.parametrize('gate_mode', GATE_MODES)
def test_arms(gate_mode):
    for mode in ('none', 'erase', 'route'):
        W = knobs()
        g0 = {n: kb.dS.grad.clone() for n, kb in W.items()}
        out = project_all(W, VS, mode, gate_mode=gate_mode)
        assert set(out['per_module']) == set(VS)
        assert torch.equal(W['m2'].dS.grad, g0['m2'])                      # module outside V untouched
        hack_grads = {n: kb.dS_hack.grad for n, kb in W.items()}
        if mode == 'none':
            assert all(torch.equal(W[n].dS.grad, g0[n]) for n in W)         # bit-identical
            assert out['cout'] == out['cin']
        if mode == 'route':
            for n, v in VS.items():
                h = hack_grads[n]
                assert h is not None and float(h.norm()) > 0
                assert torch.allclose(h, v.T @ (v @ h), atol=1e-5)
                assert torch.allclose(W[n].dS.grad + h, g0[n], atol=1e-5)
            assert hack_grads['m2'] is None
        else:
            assert all(h is None for h in hack_grads.values())               # only route feeds the quarantine
        if mode != 'none' and gate_mode == 'one_sided': assert out['cout'] < 1e-5
        if mode != 'none' and gate_mode == 'no_gate':
            for n, v in VS.items(): assert float((v @ W[n].dS.grad).abs().max()) < 1e-5


def test_erase_and_route_after_a_step():
    for mode, moved in (('erase', False), ('route', True)):
        W = knobs()
        opt = make_optimizer(W, lr=0.1)
        project_all(W, VS, mode)
        optimizer_step(opt, W, VS, mode=mode)
        assert (sum(float(kb.dS_hack.detach().norm()) for kb in W.values()) > 0) == moved


def test_fired_fraction():
    W = knobs()
    W['m0'].dS.grad = -VS['m0'][0].clone()                 # purely anti-hack: cin 0, does not fire
    W['m1'].dS.grad = VS['m1'][1].clone()                  # purely hack-ward: cin 1
    out = project_all(W, VS, 'none')
    assert out['fired'] == 0.5
    assert out['per_module']['m0']['cin'] == pytest.approx(0.0, abs=1e-6)
    assert out['per_module']['m1']['cin'] == pytest.approx(1.0, rel=1e-5)
    assert out['cin'] == pytest.approx(0.5, rel=1e-5)


def test_project_all_errors():
    W = knobs()
    with pytest.raises(ValueError, match="mode='delete'"): project_all(W, VS, 'delete')
    with pytest.raises(ValueError, match="gate_mode='x'"): project_all(W, VS, 'erase', gate_mode='x')
    with pytest.raises(ValueError, match="mode='route' needs a hack basis"): project_all(W, None, 'route')
    with pytest.raises(ValueError, match="module 'zz', which the live model does not wrap"):
        project_all(W, {'zz': orth(1, 16)}, 'erase')
    with pytest.raises(ValueError, match=r"V\['m0'\] has r=8 but the live knob has r=16"):
        project_all(W, {'m0': orth(1, 8)}, 'erase')
    with pytest.raises(ValueError, match=r"rows of V\['m0'\] are not orthonormal"):
        project_all(W, {'m0': torch.ones(1, 16)}, 'erase')
    W['m1'].dS.grad[0] = float('inf')
    with pytest.raises(FloatingPointError, match="NaN/inf in dS.grad of module 'm1'"): project_all(W, VS, 'erase')
    W['m1'].dS.grad = None
    with pytest.raises(RuntimeError, match="module 'm1' has no dS.grad"): project_all(W, VS, 'none')


def test_v_none_and_vhack_object():
    W = knobs()
    assert project_all(W, None, 'none') == dict(cin=None, cout=None, fired=None, per_module={})
    assert all(kb.dS_hack.grad is None for kb in W.values())
    vh = VHack(VS, {n: torch.ones(v.shape[0]) for n, v in VS.items()})
    W = knobs()
    assert project_all(W, vh, 'none')['cin'] == project_all(knobs(), VS, 'none')['cin']


# ── cin helpers ────────────────────────────────────────────────────────────
def test_cos_in():
    assert cos_in({}, VS) is None and cos_in(None, VS) is None
    assert cos_in({'m0': VS['m0'][0], 'm1': -VS['m1'][0]}, VS) == pytest.approx(0.5, rel=1e-5)
    with pytest.raises(KeyError, match="no gradient for module 'm1'"): cos_in({'m0': VS['m0'][0]}, VS)
    with pytest.raises(ValueError, match="gradient of module 'm0' has shape"): cos_in({'m0': torch.ones(3), 'm1': torch.ones(24)}, VS)
    with pytest.raises(FloatingPointError, match="module 'm1'"): cos_in({'m0': torch.ones(16), 'm1': torch.full((24,), float('nan'))}, VS)


@pytest.mark.parametrize('k, r', [(1, 32), (2, 32), (5, 100)])
def test_cin_null_exact_matches_monte_carlo(k, r):
    V = {'m0': orth(k, r, k)}
    W = {'m0': SimpleNamespace(r=r)}
    g = torch.randn(20000, r, generator=torch.Generator().manual_seed(0))
    mc = float((torch.relu(g @ V['m0'].T).norm(dim=1) / g.norm(dim=1)).mean())
    assert cin_null(V, W, exact=True) == pytest.approx(mc, rel=0.03)
    assert cin_null(V, W) == pytest.approx(math.sqrt(k / r))
    assert cin_null(V, W, exact=True) < cin_null(V, W)


# ── the Adam leak ──────────────────────────────────────────────────────────
def _leak(adam_aware, mode='erase', r=8, warm=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    W = knobs((r,), seed)
    v = torch.zeros(1, r); v[0, :2] = torch.tensor([3.0, 1.0]); v /= v.norm()
    V = {'m0': v}
    opt = make_optimizer(W, lr=0.1)
    for t in range(warm + 1):
        g = 2 * v[0] + 0.1 * torch.randn(r, generator=gen)
        W['m0'].dS.grad = g.clone(); W['m0'].dS_hack.grad = g.clone()
        m = 'none' if t < warm else mode
        pa = project_all(W, V, m)
        sum0 = W['m0'].dS.detach() + W['m0'].dS_hack.detach()
        out = optimizer_step(opt, W, V, mode=m, adam_aware=adam_aware)
    return pa, out, W, V


@pytest.mark.parametrize('seed', range(3))
def test_momentum_leak_and_update_projection(seed):
    pa, off, _, _ = _leak('off', seed=seed)
    assert pa['cout'] < 1e-5                               # the gradient is clean …
    assert off['cout_update'] > 0.3                        # … the step is not
    _, upd, _, _ = _leak('update', seed=seed)
    assert upd['cout_update_raw'] == pytest.approx(off['cout_update'], rel=1e-5)
    assert upd['cout_update'] < 1e-5
    _, mom, _, _ = _leak('moments', seed=seed)
    assert mom['cout_update'] < off['cout_update']


def test_route_update_projection_keeps_the_sum():
    W = knobs((8,), grads=False)
    V = {'m0': orth(2, 8, 3)}
    opt = make_optimizer(W, lr=0.1)
    for t in range(4):
        W['m0'].dS.grad = 2 * V['m0'][0] + 0.1 * torch.randn(8, generator=torch.Generator().manual_seed(t))
        mode = 'none' if t < 3 else 'route'
        project_all(W, V, mode)
        before = snapshot(W)
        opt.step()
        s_adam = (W['m0'].dS + W['m0'].dS_hack).detach().clone()
        if mode == 'route':
            raw = project_update(W, V, before, route=True)
            assert raw > 0.1
    assert torch.allclose((W['m0'].dS + W['m0'].dS_hack).detach(), s_adam, atol=1e-6)
    assert cout_update(W, V, before) < 1e-5


def test_no_gate_update_projection_zeroes_span():
    pa, out, W, V = _leak('update', warm=3)
    W2 = knobs((8,), grads=False)
    W2['m0'].dS.grad = V['m0'][0] - 0.3 * torch.ones(8)
    opt = make_optimizer(W2, lr=0.1)
    project_all(W2, V, 'erase', gate_mode='no_gate')
    before = snapshot(W2)
    optimizer_step(opt, W2, V, mode='erase', gate_mode='no_gate')
    step = before['m0'] - W2['m0'].dS.detach()
    assert float((V['m0'] @ step).abs().max()) < 1e-6


def test_project_moments_removes_hackward_mass():
    W = knobs((8,), grads=False)
    V = {'m0': orth(1, 8, 5)}
    opt = make_optimizer(W, lr=0.1)
    W['m0'].dS.grad = 3 * V['m0'][0]
    opt.step()
    m = opt.state[W['m0'].dS]['exp_avg']
    assert float(V['m0'] @ m) > 0
    project_moments(opt, W, V)
    assert float(V['m0'] @ m) == pytest.approx(0.0, abs=1e-6)


def test_none_mode_changes_nothing_and_v_none():
    _, out, _, _ = _leak('update', mode='none')
    assert out['cout_update'] == pytest.approx(out['cout_update_raw'])   # no projection in the vanilla arm
    W = knobs()
    opt = make_optimizer(W, lr=0.1)
    project_all(W, None, 'none')
    assert optimizer_step(opt, W, None, mode='none') == dict(cout_update=None, cout_update_raw=None)
    with pytest.raises(ValueError, match="adam_aware='always'"): optimizer_step(opt, W, VS, adam_aware='always')
    with pytest.raises(KeyError, match="snapshot has no entry for module 'm1'"): cout_update(W, VS, {'m0': torch.zeros(16)})


def test_make_optimizer_groups_and_decay():
    W = knobs()
    opt = make_optimizer(W, lr=1e-3, weight_decay=0.1)
    names = {g['name']: g for g in opt.param_groups}
    assert names['dS']['weight_decay'] == 0.1 and names['dS_hack']['weight_decay'] == 0.0
    assert len(names['dS']['params']) == len(names['dS_hack']['params']) == 3
    for kw, msg in [(dict(lr=0), 'lr=0'), (dict(lr=1e-3, betas=(0.9, 1.0)), 'betas'),
                    (dict(lr=1e-3, hack_weight_decay=-1), 'weight decays')]:
        with pytest.raises(ValueError, match=msg): make_optimizer(W, **kw)

    def decayed(hwd):
        W = knobs((8,), grads=False)
        V = {'m0': orth(1, 8, 4)}
        with torch.no_grad(): W['m0'].dS_hack.copy_(V['m0'][0])
        opt = make_optimizer(W, lr=0.01, hack_weight_decay=hwd)
        for _ in range(10):
            W['m0'].dS.grad = -V['m0'][0].clone()         # anti-hack: nothing routed, quarantine still decays
            project_all(W, V, 'route'); opt.step()
        return float(W['m0'].dS_hack.detach().norm())
    assert decayed(0.0) == pytest.approx(1.0, abs=1e-6)
    assert decayed(0.5) < 0.96
