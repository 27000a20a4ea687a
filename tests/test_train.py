"""The training loop on the tiny model: arms, resume equality, NaN stops, bad configs, bf16."""
import json, math
import pytest, torch
from vhack.config import make_config
from vhack.train import main, read_rows, check_run

TIMING = {'t_gen', 't_grade', 't_bwd', 't_step'}


def _cfg(tmp_path, name, **kw):
    base = dict(steps=3, eval_ablate_every=1, run_dir=str(tmp_path/name))
    return make_config('smoke', **{**base, **kw})


@pytest.mark.parametrize('arm', ['none', 'erase', 'route'])
def test_arms(tmp_path, arm):
    out = main(_cfg(tmp_path, arm, intervention=arm), progress=False)
    rows = out['rows']
    assert [r['step'] for r in rows] == [0, 1, 2]
    assert check_run(out['run_dir'], 3) == []
    if arm == 'none':   # V is None: nothing is measured against it, nothing projected
        assert all(r['cin_s'] is None and r['cout'] is None for r in rows)
        assert not (out['run_dir']/'v_hack.safetensors').exists()
    else:
        assert all(0 <= r['cin_s'] <= 1 for r in rows if r['frac_zero_var'] < 1)
        assert (out['run_dir']/'v_hack.safetensors').exists()
    if arm == 'route': assert rows[-1]['dS_hack_norm'] > 0          # the quarantine fills
    else: assert all(r['dS_hack_norm'] == 0 for r in rows)           # erase/none never touch it
    if arm == 'erase': assert all(r['cout'] < 1e-6 for r in rows if r['cout'] is not None)
    assert all(r['hack_deploy'] is not None for r in rows)


def _strip(rows): return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_resume_equals_uninterrupted(tmp_path):
    full = main(_cfg(tmp_path, 'a', steps=4, ckpt_every=2), progress=False)['rows']

    class Stop(Exception): pass
    def stop_at_3(step, wrappers):
        if step == 3: raise Stop
    with pytest.raises(Stop):
        main(_cfg(tmp_path, 'b', steps=4, ckpt_every=2), progress=False, nan_hook=stop_at_3)
    assert [r['step'] for r in read_rows(tmp_path/'b'/'rows.jsonl')] == [0, 1, 2]   # step 2 ran after the checkpoint
    resumed = main(_cfg(tmp_path, 'b', steps=4, ckpt_every=2), progress=False)['rows']
    assert _strip(resumed) == _strip(full)


def test_other_config_refuses_folder(tmp_path):
    main(_cfg(tmp_path, 'c', steps=1), progress=False)
    with pytest.raises(ValueError, match="another config"):
        main(_cfg(tmp_path, 'c', steps=1, lr=0.123), progress=False)


def test_nan_stops_naming_step_and_module(tmp_path):
    def poison(step, wrappers):
        if step == 1:
            k = wrappers['model.layers.1.mlp.down_proj']
            k.dS.grad[0] = float('nan')
    with pytest.raises(FloatingPointError, match=r"step 1.*model\.layers\.1\.mlp\.down_proj"):
        main(_cfg(tmp_path, 'nan'), progress=False, nan_hook=poison)


def test_nan_in_knob_names_step(tmp_path):
    def poison(step, wrappers):
        if step == 0:
            with torch.no_grad(): wrappers['model.layers.0.self_attn.q_proj'].dS[0] = float('nan')
    with pytest.raises(FloatingPointError, match=r"step 0: .*model\.layers\.0\.self_attn\.q_proj"):
        main(_cfg(tmp_path, 'nan2'), progress=False, nan_hook=poison)


@pytest.mark.parametrize('kw,match', [
    (dict(mix_ratio=1.5), 'mix_ratio'), (dict(group=1), 'group'), (dict(intervention='delete'), 'intervention'),
    (dict(teacher_pool_dir='/no/such/pool'), 'teacher_pool_dir'), (dict(learning_rate=1), 'unknown config field')])
def test_bad_config_fails_before_load(kw, match):
    with pytest.raises(ValueError, match=match): make_config('smoke', **kw)


def test_unknown_preset():
    with pytest.raises(ValueError, match='unknown preset'): make_config('medium')


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the no-GPU error')
def test_cuda_without_gpu():
    with pytest.raises(ValueError, match='no CUDA GPU'): make_config('smoke', device='cuda')


def test_bf16_two_steps(tmp_path):
    out = main(_cfg(tmp_path, 'bf16', steps=2, dtype='bf16', eval_ablate_every=1, n_eval=2), progress=False)
    assert len(out['rows']) == 2 and all(math.isfinite(r['dS_norm']) for r in out['rows'])
    assert out['rows'][-1]['dS_hack_norm'] > 0


@pytest.mark.parametrize('control', ['shuffled', 'nonhack'])
def test_refresh_keeps_the_control(tmp_path, control):
    out = main(_cfg(tmp_path, f'ref-{control}', intervention='erase', v_control=control, vhack_refresh_every=1,
                    refresh_min_overlap=0.0, steps=2, eval_ablate_every=10), progress=False)
    from vhack.extract import load_vhack
    assert load_vhack(out['run_dir']/'v_hack.safetensors').meta['control'] == control
    assert out['rows'][1]['basis_overlap'] is not None


def test_random_control_cannot_refresh():
    with pytest.raises(ValueError, match='nothing to refresh'):
        make_config('smoke', intervention='erase', v_control='random', vhack_refresh_every=2)
