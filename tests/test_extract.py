"""vhack.extract: planted recovery, tiny-model extraction, bad input, provenance, files, overlap, controls."""
import json, math, warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from vhack.extract import (CONTROLS, FORMAT, NONHACK_TAG, PROVENANCE_KEYS, VHack, agreement, basis_from_diffs,
                           basis_overlap, check_pairs, check_v, control_basis, extract_v_hack, load_vhack, pair_grads,
                           pairs_hash, postprocess_v_hack, random_basis, resolve_or_extract, save_vhack)


def mkpair(id, hack=None, clean=None, tags=('hack',), **kw):
    return SimpleNamespace(id=id, mode='run_tests', tags=list(tags),
                           messages=[{'role': 'system', 'content': 'Write Python.'},
                                     {'role': 'user', 'content': f'Task {id}: add two numbers.'}],
                           hack=f'def run_tests():\n    return {id!r}' if hack is None else hack,
                           clean=f'def add(a, b):\n    return a + b  # {id}' if clean is None else clean, **kw)


PAIRS = [mkpair(f'p{i}') for i in range(6)]
NONHACK = [mkpair(f'n{i}', hack=f'def add(x, y):\n    return y + x  # {i}', tags=[NONHACK_TAG]) for i in range(3)]


@pytest.fixture(scope='module')
def tiny():
    from vhack.models import load_model
    from vhack.adapter import wrap
    model, tok = load_model('tiny')
    return model, tok, wrap(model, progress=False)


def orth(k, r, seed=0):
    return random_basis({'x': (k, r)}, seed)['x']


# ── the linear algebra ─────────────────────────────────────────────────────
@pytest.mark.parametrize('seed', range(5))
@pytest.mark.parametrize('k', [1, 3])
def test_planted_direction_recovered_with_sign(seed, k):
    g = torch.Generator().manual_seed(seed)
    r, n = 48, 10
    u = torch.randn(r, generator=g); u /= u.norm()
    a = 0.5 + torch.rand(n, generator=g)
    a[0] = -30.0                                           # an outlier that flips sign(mean)
    D = a[:, None] * u + 0.05 * torch.randn(n, r, generator=g)
    V, S = basis_from_diffs({'m': D}, k)
    assert V['m'].shape == (k, r)
    assert float(V['m'][0] @ u) > 0.99
    assert torch.allclose(V['m'] @ V['m'].T, torch.eye(k), atol=1e-5)
    assert torch.all(S['m'][:-1] >= S['m'][1:])


def test_tau_floor_drops_rows_and_keeps_orthonormal():
    g = torch.Generator().manual_seed(0)
    D = torch.randn(8, 16, generator=g) * torch.tensor([10.0] + [0.1] * 15)
    V, S = basis_from_diffs({'m': D}, 4, tau_axis=0.5)
    assert V['m'].shape[0] == 1 and S['m'].shape == (1,)
    V0, _ = basis_from_diffs({'m': D}, 4, tau_axis=0.0)
    assert V0['m'].shape[0] == 4


def test_tie_broken_by_sum():
    D = torch.tensor([[1.0, 0.0], [-3.0, 0.0]])            # one vote each way; the sum says negative
    V, _ = basis_from_diffs({'m': D}, 1)
    assert float(V['m'][0, 0]) < 0


def test_agreement_counts_positive_projections():
    V = {'m': torch.tensor([[1.0, 0.0]])}
    assert agreement({'m': torch.tensor([[1.0, 5], [2, 0], [-1, 0], [3, 3]])}, V) == 0.75


# ── bad input ──────────────────────────────────────────────────────────────
@pytest.mark.parametrize('pair, msg', [
    (mkpair('a', hack=''), "pair 'a' (#0): empty hack completion"),
    (mkpair('a', clean='   \n'), "pair 'a' (#0): empty clean completion"),
    (mkpair('a', hack='same', clean='same'), "pair 'a' (#0): hack and clean completions are identical"),
    (mkpair('a', clean_messages=[{'role': 'user', 'content': 'other prompt'}]),
     "pair 'a' (#0): the prompt differs between hack and clean"),
    (mkpair('a', hack_messages=[{'role': 'user', 'content': 'other prompt'}]),
     "pair 'a' (#0): the prompt differs between hack and clean"),
    (SimpleNamespace(id='a', messages=[{'role': 'user', 'content': 'x'}], hack='y'), "pair 'a' (#0) has no attribute 'clean'"),
    (SimpleNamespace(id='a', messages='not a list', hack='y', clean='z'), "pair 'a' (#0): messages must be"),
    (SimpleNamespace(id='a', messages=[{'role': 'user', 'content': 'x'}, {'role': 'assistant', 'content': 'y'}],
                     hack='y', clean='z'), "ends with an assistant turn"),
])
def test_check_pairs_names_the_pair(pair, msg):
    with pytest.raises(ValueError) as e: check_pairs([pair])
    assert msg in str(e.value)


def test_duplicate_ids_and_empty():
    with pytest.raises(ValueError, match="pair 'p0' \\(#1\\): duplicate"): check_pairs([PAIRS[0], PAIRS[0]])
    with pytest.raises(ValueError, match='no pairs'): check_pairs([])


def test_real_basis_refuses_nonhack_pairs(tiny):
    model, tok, W = tiny
    with pytest.raises(ValueError, match=r"the real basis got pairs tagged 'control_nonhack' \(\['n0', 'n1', 'n2'\]\)"):
        extract_v_hack(model, W, tok, PAIRS + NONHACK, k=1, progress=False)
    extract_v_hack(model, W, tok, NONHACK, k=1, control='nonhack', progress=False)


def test_k_larger_than_pairs(tiny):
    model, tok, W = tiny
    with pytest.raises(ValueError, match=r'k=5 is larger than the number of training pairs \(6 pairs − 2 held out = 4\)'):
        extract_v_hack(model, W, tok, PAIRS, k=5, n_heldout=2, progress=False)


def test_k_larger_than_rank(tiny):
    model, tok, W = tiny
    many = [mkpair(f'q{i}') for i in range(40)]
    with pytest.raises(ValueError, match="exceeds the rank r=32 of module 'model.layers.0.self_attn.k_proj'"):
        extract_v_hack(model, W, tok, many, k=33, progress=False)


@pytest.mark.parametrize('kw, msg', [
    (dict(k=0), 'k=0'), (dict(k=1.5), 'k=1.5'), (dict(k=1, tau_axis=1.5), 'tau_axis=1.5'),
    (dict(k=1, n_heldout=6), 'n_heldout=6 with 6 pairs'), (dict(k=1, n_heldout=-1), 'n_heldout=-1'),
    (dict(k=1, nll_norm='median'), "nll_norm='median'"), (dict(k=1, nll_norm='fixed'), 'needs max_new'),
    (dict(k=1, nll_norm='fixed', max_new=4), "pair 'p0': the hack completion has"),
])
def test_bad_arguments(tiny, kw, msg):
    model, tok, W = tiny
    with pytest.raises(ValueError) as e: extract_v_hack(model, W, tok, PAIRS, progress=False, **kw)
    assert msg in str(e.value)


def test_completion_holding_the_prompt(tiny):
    from vhack.models import render_prompt
    model, tok, W = tiny
    p = mkpair('a')
    p.hack = render_prompt(tok, p.messages) + 'def run_tests(): pass'
    with pytest.raises(ValueError, match="pair 'a': the hack completion starts with the rendered prompt"):
        extract_v_hack(model, W, tok, [p, mkpair('b')], k=1, progress=False)


def test_nan_gradient_names_pair_and_module(tiny):
    model, tok, W = tiny
    name = list(W)[3]
    h = W[name].dS.register_hook(lambda g: g * float('nan'))
    try:
        with pytest.raises(FloatingPointError, match=f"pair 'p0' \\(hack\\): NaN/inf gradient in module '{name}'"):
            extract_v_hack(model, W, tok, PAIRS, k=1, progress=False)
    finally: h.remove()
    assert all(kb.dS.grad is None for kb in W.values())     # restored even on error


def test_nan_loss_names_pair(tiny):
    model, tok, W = tiny
    kb = next(iter(W.values()))
    with torch.no_grad(): kb.dS.fill_(float('nan'))
    try:
        with pytest.raises(FloatingPointError, match="pair 'p0': the hack NLL is nan"):
            extract_v_hack(model, W, tok, PAIRS, k=1, progress=False)
    finally:
        with torch.no_grad(): kb.dS.zero_()


@pytest.mark.parametrize('V, msg', [
    ({'a': torch.randn(3, 8)}, "rows of V['a'] are not orthonormal"),
    ({'a': torch.eye(3, 8) * 2}, "rows of V['a'] are not orthonormal"),
    ({'a': torch.eye(3, 8, dtype=torch.float64)}, "V['a'] is torch.float64"),
    ({'a': torch.zeros(0, 8)}, "V['a'] must be a 2-D tensor"),
    ({'a': torch.ones(8)}, "V['a'] must be a 2-D tensor"),
    ({}, 'non-empty dict'),
])
def test_check_v(V, msg):
    with pytest.raises(ValueError) as e: check_v(V)
    assert msg in str(e.value)


# ── tiny-model extraction ──────────────────────────────────────────────────
def test_extraction_deterministic_orthonormal(tiny):
    model, tok, W = tiny
    a = extract_v_hack(model, W, tok, PAIRS, k=3, n_heldout=1, progress=False)
    b = extract_v_hack(model, W, tok, PAIRS, k=3, n_heldout=1, progress=False)
    assert a.modules == list(W)
    for n in W:
        assert torch.equal(a.V[n], b.V[n]) and torch.equal(a.S[n], b.S[n])
        v = a.V[n]
        assert v.dtype == torch.float32 and v.shape[1] == W[n].r
        assert torch.allclose(v @ v.T, torch.eye(v.shape[0]), atol=1e-5)
    assert a.meta['train_agree'] >= 0.5 and 0 <= a.meta['heldout_agree'] <= 1
    assert a.meta['n_train'] == 5 and len(a.meta['heldout_ids']) == 1
    for key in PROVENANCE_KEYS: assert key in a.meta


def test_heldout_choice_depends_on_seed(tiny):
    model, tok, W = tiny
    ids = {tuple(extract_v_hack(model, W, tok, PAIRS, k=1, n_heldout=2, seed=s, progress=False).meta['heldout_ids'])
           for s in range(6)}
    assert len(ids) > 1


def test_fixed_norm_is_scaled_sum(tiny):
    model, tok, W = tiny
    Gm = pair_grads(model, W, tok, PAIRS[:2], 'mean', progress=False)
    Gf = pair_grads(model, W, tok, PAIRS[:2], 'fixed', max_new=100, progress=False)
    from vhack.models import encode, render_prompt
    n = encode(tok, [render_prompt(tok, PAIRS[1].messages)], [PAIRS[1].clean])['completion_mask'].sum()
    name = list(W)[0]
    assert torch.allclose(Gf['clean'][name][1] * 100 / n, Gm['clean'][name][1], atol=1e-6)


def test_extraction_keeps_existing_grads(tiny):
    model, tok, W = tiny
    kb = next(iter(W.values()))
    kb.dS.grad = torch.full_like(kb.dS, 7.0)
    try:
        extract_v_hack(model, W, tok, PAIRS, k=1, progress=False)
        assert torch.equal(kb.dS.grad, torch.full_like(kb.dS, 7.0))
    finally: kb.dS.grad = None


# ── files and provenance ───────────────────────────────────────────────────
def test_save_load_roundtrip(tmp_path, tiny):
    model, tok, W = tiny
    vh = extract_v_hack(model, W, tok, PAIRS, k=2, progress=False)
    p = save_vhack(vh, tmp_path/'sub'/'v.safetensors')
    back = load_vhack(p)
    assert back.modules == vh.modules and back.meta == vh.meta
    assert all(torch.equal(back.V[n], vh.V[n]) and torch.equal(back.S[n], vh.S[n]) for n in vh.V)
    pp = postprocess_v_hack(vh, 2, 0.5)
    assert load_vhack(save_vhack(pp, tmp_path/'pp.safetensors')).ks == pp.ks


def test_load_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='no hack basis at'): load_vhack(tmp_path/'missing.safetensors')
    (tmp_path/'junk.safetensors').write_bytes(b'not a safetensors file')
    with pytest.raises(ValueError, match='is not a readable safetensors file'): load_vhack(tmp_path/'junk.safetensors')
    save_file({'x': torch.zeros(2)}, str(tmp_path/'plain.safetensors'))
    with pytest.raises(ValueError, match='has no vhack provenance'): load_vhack(tmp_path/'plain.safetensors')
    meta = {'format': FORMAT, 'module_order': ['a']}
    save_file({'V/a': torch.randn(2, 8), 'S/a': torch.ones(2)}, str(tmp_path/'bad.safetensors'), metadata={'vhack': json.dumps(meta)})
    with pytest.raises(ValueError, match=r"bad.safetensors: rows of V\['a'\] are not orthonormal"): load_vhack(tmp_path/'bad.safetensors')
    save_file({'V/a': orth(2, 8)}, str(tmp_path/'noS.safetensors'), metadata={'vhack': json.dumps(meta)})
    with pytest.raises(ValueError, match=r"lacks the tensors of module\(s\) \['a'\]"): load_vhack(tmp_path/'noS.safetensors')
    save_file({'V/a': orth(2, 8), 'S/a': torch.ones(2)}, str(tmp_path/'old.safetensors'),
              metadata={'vhack': json.dumps(dict(meta, format='v0'))})
    with pytest.raises(ValueError, match="has format 'v0'"): load_vhack(tmp_path/'old.safetensors')


KW = dict(model_id='tiny', k=2, tau_axis=0.1, n_heldout=1, seed=0)


def _tamper(path, key):
    vh = load_vhack(path)
    vh.meta[key] = {'modules': {'x': 1}, 'k': 99, 'tau_axis': 0.7, 'max_new': 5, 'n_heldout': 3, 'seed': 42}.get(key, 'tampered')
    save_vhack(vh, path)


@pytest.mark.parametrize('key', PROVENANCE_KEYS)
def test_provenance_mismatch_names_field(tmp_path, tiny, key):
    model, tok, W = tiny
    path = tmp_path/'v.safetensors'
    resolve_or_extract(model, W, tok, PAIRS, path, progress=False, **KW)
    if key == 'format':   # a foreign format is refused at load already
        vh = load_vhack(path); vh.meta['format'] = 'other'; save_vhack(vh, path)
        with pytest.raises(ValueError, match="has format 'other'"):
            resolve_or_extract(model, W, tok, PAIRS, path, progress=False, require_cache=True, **KW)
        return
    _tamper(path, key)
    with pytest.raises(ValueError) as e:
        resolve_or_extract(model, W, tok, PAIRS, path, progress=False, require_cache=True, **KW)
    assert f"field {key!r} differs" in str(e.value) and str(path) in str(e.value)
    with warnings.catch_warnings(record=True) as w:            # without require_cache: re-extract and overwrite
        warnings.simplefilter('always')
        vh = resolve_or_extract(model, W, tok, PAIRS, path, progress=False, **KW)
    assert any(f"field {key!r} differs" in str(x.message) for x in w)
    assert load_vhack(path).meta[key] == vh.meta[key] != 'tampered'


@pytest.mark.parametrize('change, field', [
    (dict(k=3), 'k'), (dict(tau_axis=0.2), 'tau_axis'), (dict(nll_norm='fixed', max_new=64), 'nll_norm'),
    (dict(n_heldout=2), 'n_heldout'), (dict(seed=1), 'seed'), (dict(model_id='other'), 'model_id'),
    (dict(control='random'), 'control'),
])
def test_live_setting_change_is_a_mismatch(tmp_path, tiny, change, field):
    model, tok, W = tiny
    path = tmp_path/'v.safetensors'
    resolve_or_extract(model, W, tok, PAIRS, path, progress=False, **KW)
    with pytest.raises(ValueError, match=f"field '{field}' differs"):
        resolve_or_extract(model, W, tok, PAIRS, path, progress=False, require_cache=True, **dict(KW, **change))


def test_pairs_and_modules_mismatch(tmp_path, tiny):
    model, tok, W = tiny
    path = tmp_path/'v.safetensors'
    resolve_or_extract(model, W, tok, PAIRS, path, progress=False, **KW)
    with pytest.raises(ValueError, match="field 'pairs_hash' differs"):
        resolve_or_extract(model, W, tok, PAIRS[:5], path, progress=False, require_cache=True, **KW)
    sub = dict(list(W.items())[:4])                            # a different set of wrapped modules
    with pytest.raises(ValueError, match=r"field 'modules' differs: 10 cached module\(s\) not live"):
        resolve_or_extract(model, sub, tok, PAIRS, path, progress=False, require_cache=True, **KW)


def test_resolve_hit_does_no_backward(tmp_path, tiny):
    model, tok, W = tiny
    path = tmp_path/'v.safetensors'
    a = resolve_or_extract(model, W, tok, PAIRS, path, progress=False, **KW)

    def boom(g): raise RuntimeError('backward ran')
    hs = [kb.dS.register_hook(boom) for kb in W.values()]
    try:
        b = resolve_or_extract(model, W, tok, PAIRS, path, progress=False, **KW)
        # nonhack pairs in the list do not change the real basis' provenance
        c = resolve_or_extract(model, W, tok, PAIRS + NONHACK, path, progress=False, **KW)
    finally:
        for h in hs: h.remove()
    assert all(torch.equal(a.V[n], b.V[n]) and torch.equal(a.V[n], c.V[n]) for n in a.V)


def test_require_cache_without_file(tmp_path, tiny):
    model, tok, W = tiny
    with pytest.raises(FileNotFoundError, match='no cached hack basis at'):
        resolve_or_extract(model, W, tok, PAIRS, tmp_path/'nope.safetensors', require_cache=True, **KW)
    with pytest.raises(ValueError, match="control='placebo'"):
        resolve_or_extract(model, W, tok, PAIRS, tmp_path/'x.safetensors', **dict(KW, control='placebo'))


# ── post-processing and overlap ────────────────────────────────────────────
def test_postprocess_global_floor():
    vh = VHack({'a': orth(3, 16), 'b': orth(2, 8, 1), 'c': orth(1, 8, 2)},
               {'a': torch.tensor([9., 5, 1]), 'b': torch.tensor([2., 1.5]), 'c': torch.tensor([4.])}, {'k': 3})
    pp = postprocess_v_hack(vh, 2, 0.5)                       # pooled top-2: [9,5,2,1.5,4] → median 4
    assert pp.ks == {'a': 2, 'c': 1} and pp.meta['dropped_modules'] == ['b']
    assert torch.equal(pp.V['a'], vh.V['a'][:2])
    assert postprocess_v_hack(vh, 1, 0.0).ks == {'a': 1, 'b': 1, 'c': 1}
    with pytest.raises(ValueError, match='k_use=0'): postprocess_v_hack(vh, 0)
    with pytest.raises(ValueError, match='drop_bottom_frac=-0.1'): postprocess_v_hack(vh, 1, -0.1)


def test_basis_overlap_definition():
    A = {'a': orth(3, 16), 'b': orth(2, 8, 1)}
    assert basis_overlap(A, A) == pytest.approx(1.0)
    assert basis_overlap(A, {'a': A['a'], 'b': -A['b']}) == pytest.approx(1.0)
    assert basis_overlap({'a': A['a']}, A) == pytest.approx(3 / 5)            # a missing module counts 0
    assert basis_overlap({'a': A['a'][:2]}, {'a': A['a']}) == pytest.approx(2 / 3)   # so does a missing row
    assert basis_overlap(A, {'c': orth(1, 4)}) == 0.0
    with pytest.raises(ValueError, match="module 'a' has r=16 in the new basis and r=12"):
        basis_overlap(A, {'a': orth(3, 12)})
    with pytest.raises(ValueError, match='not orthonormal'): basis_overlap(A, {'a': torch.ones(1, 16)})


# ── controls ───────────────────────────────────────────────────────────────
def test_controls_match_shapes(tiny):
    model, tok, W = tiny
    real = postprocess_v_hack(extract_v_hack(model, W, tok, PAIRS, k=3, n_heldout=1, progress=False), 3, 0.4)
    for kind in CONTROLS:
        c = control_basis(kind, real, model=model, wrappers=W, tok=tok, pairs=PAIRS + NONHACK, seed=3, progress=False)
        assert c.ks == real.ks and c.meta['control'] == kind
        assert all(torch.equal(c.S[n], real.S[n]) for n in real.S)
        check_v(c, W)
    sh = control_basis('shuffled', real, model=model, wrappers=W, tok=tok, pairs=PAIRS, seed=3, progress=False)
    for n, v in real.V.items():                                # same span, orientation scrambled
        assert torch.allclose(sh.V[n].T @ sh.V[n], v.T @ v, atol=1e-4)
    r1, r2 = (control_basis('random', real, seed=s).V for s in (1, 2))
    assert all(not torch.equal(r1[n], r2[n]) for n in r1)


def test_control_errors(tiny):
    model, tok, W = tiny
    real = extract_v_hack(model, W, tok, PAIRS, k=2, progress=False)
    with pytest.raises(ValueError, match="pairs tagged 'control_nonhack'"):
        control_basis('nonhack', real, model=model, wrappers=W, tok=tok, pairs=PAIRS, progress=False)
    with pytest.raises(ValueError, match="control 'nonhack' has 1 pairs but the real basis has up to 2 rows"):
        control_basis('nonhack', real, model=model, wrappers=W, tok=tok, pairs=PAIRS + NONHACK[:1], progress=False)
    with pytest.raises(ValueError, match='pairs_hash differs'):
        control_basis('shuffled', real, model=model, wrappers=W, tok=tok, pairs=PAIRS[:4], progress=False)
    with pytest.raises(ValueError, match='pass model, wrappers, tok'):
        control_basis('shuffled', real)
    with pytest.raises(ValueError, match="control kind 'x'"): control_basis('x', real)


def test_random_basis_per_module_seed():
    a = random_basis({'m1': (2, 16), 'm2': (3, 8)}, seed=5)
    b = random_basis({'m2': (3, 8)}, seed=5)
    assert torch.equal(a['m2'], b['m2'])                       # independent of the other modules
    check_v(a)


def test_control_through_resolve(tmp_path, tiny):
    model, tok, W = tiny
    p = tmp_path/'ctl.safetensors'
    c = resolve_or_extract(model, W, tok, PAIRS + NONHACK, p, progress=False, **dict(KW, control='nonhack'))
    real = load_vhack(tmp_path/'ctl.real.safetensors')
    assert c.ks == real.ks and c.meta['control'] == 'nonhack' and real.meta['control'] == 'real'
    c2 = resolve_or_extract(model, W, tok, PAIRS + NONHACK, p, progress=False, require_cache=True, **dict(KW, control='nonhack'))
    assert all(torch.equal(c.V[n], c2.V[n]) for n in c.V)
