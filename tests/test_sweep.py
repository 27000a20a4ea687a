"Tests for vhack.sweep: planning, skip and resume, config checks, failures, summary, CLI; one real papermill run."
import json, logging, subprocess, sys
from pathlib import Path

import nbformat
import pytest

from vhack.plots import synthetic_runs, arm_label
from vhack.sweep import Spec, as_spec, run_state, check_run_config, run_sweep, cli, papermill_execute

ROOT = Path(__file__).resolve().parents[1]


class FakeExecutor:
    "Stands in for papermill: records calls; writes what a run writes (config, rows, bluf) unless told to fail."
    def __init__(self, fail=(), no_bluf=(), crash_after_rows=()):
        self.calls, self.fail, self.no_bluf, self.crash_after_rows = [], set(fail), set(no_bluf), set(crash_after_rows)

    def __call__(self, notebook, output_path, parameters, **kw):
        self.calls.append(dict(notebook=Path(notebook), output_path=Path(output_path), **parameters))
        p = parameters
        d = Path(p['run_dir'])
        arm = arm_label(p['intervention'], p['v_control'])
        Path(output_path).write_text(json.dumps({'attempt': len(self.calls)}))
        if d.name in self.fail: raise RuntimeError('CUDA out of memory (fake)')
        synthetic_runs(d.parent, arms=[arm], seeds=[p['seed']], preset=p['preset'], steps=6, eval_every=2,
                       old_schema=None)
        cfg = json.loads((d/'config.json').read_text()); cfg.update(p['overrides'])
        (d/'config.json').write_text(json.dumps(cfg))
        if d.name in self.no_bluf or d.name in self.crash_after_rows: (d/'bluf.md').unlink()
        if d.name in self.crash_after_rows: raise KeyboardInterrupt   # not an Exception: must propagate


SPECS = [('smoke', 'none', 'real', 0), ('smoke', 'erase', 'real', 0), ('smoke', 'erase', 'random', 0)]


def test_spec_validation():
    s = as_spec(('smol', 'route', 'shuffled', 3))
    assert s == Spec('smol', 'route', 'shuffled', 3) and s.arm == 'route+shuffled' and s.run_name == 'smol-route+shuffled-s3'
    assert as_spec({'preset': 'smoke', 'intervention': 'none', 'v_control': 'real', 'seed': 0}).run_name == 'smoke-none-s0'
    import numpy as np
    assert type(as_spec(('smoke', 'none', 'real', np.int64(2))).seed) is int
    for bad, msg in [(('smoke', 'none', 'real', -1), 'seed'), (('smoke', 'none', 'real', 1.5), 'seed'),
                     (('smoke', 'none', 'real', True), 'seed'), (('', 'none', 'real', 0), 'preset'),
                     (('a/b', 'none', 'real', 0), 'preset'), (('smoke', 'nope', 'real', 0), 'unknown intervention'),
                     (('smoke', 'erase', 'gauss', 0), 'unknown v_control'), (('smoke', 'erase'), 'a spec is'),
                     (('smoke', 'none', 'shuffled', 0), 'only applies to erase/route')]:
        with pytest.raises(ValueError, match=msg): as_spec(bad)


def test_run_state(tmp_path):
    d = tmp_path/'r'
    assert run_state(d) == 'new'
    d.mkdir(); assert run_state(d) == 'new'            # an empty folder has nothing to resume
    (d/'config.json').write_text('{}'); assert run_state(d) == 'partial'
    (d/'bluf.md').write_text('x'); assert run_state(d) == 'finished'


def test_new_runs_get_their_parameters(tmp_path):
    fake = FakeExecutor()
    res = run_sweep(SPECS, runs_root=tmp_path/'runs', notebook='train.ipynb', overrides={'lr': 0.002}, execute=fake)
    assert [c['run_dir'] for c in fake.calls] == [str((tmp_path/'runs'/n).resolve()) for n in
                                                  ('smoke-none-s0', 'smoke-erase-s0', 'smoke-erase+random-s0')]
    c = fake.calls[2]
    assert (c['preset'], c['intervention'], c['v_control'], c['seed']) == ('smoke', 'erase', 'random', 0)
    assert c['overrides'] == {'lr': 0.002} and c['notebook'] == Path('train.ipynb')
    assert c['output_path'] == tmp_path/'runs'/'smoke-erase+random-s0'/'train.ipynb'
    assert set(fake.calls[0]) == {'notebook', 'output_path', 'preset', 'intervention', 'seed', 'v_control',
                                  'run_dir', 'overrides'}
    assert list(res.plan.action) == ['run']*3 and list(res.plan.status) == ['finished']*3
    assert list(res.summary.index) == ['none', 'erase', 'erase+random']
    md = (tmp_path/'runs'/'sweep_summary.md').read_text()
    assert '| erase+random |' in md and 'smoke-none-s0' in md


def test_skip_finished_resume_partial(tmp_path, caplog):
    root = tmp_path/'runs'
    run_sweep(SPECS, runs_root=root, execute=FakeExecutor())
    (root/'smoke-erase-s0'/'bluf.md').unlink()                 # erase crashed before its end
    fake = FakeExecutor()
    with caplog.at_level(logging.INFO, logger='vhack.sweep'):
        res = run_sweep(SPECS, runs_root=root, execute=fake)
    assert [Path(c['run_dir']).name for c in fake.calls] == ['smoke-erase-s0']   # same folder, run again
    assert list(res.plan.action) == ['skip', 'resume', 'skip']
    assert list(res.plan.state) == ['finished', 'partial', 'finished']
    assert (root/'smoke-erase-s0'/'train-attempt1.ipynb').exists()             # the crashed attempt is kept
    log = caplog.text
    assert 'skip' in log and 'smoke-none-s0' in log and 'resume' in log and '1 to resume, 2 finished' in log
    # everything finished now: nothing runs, the summary is still written
    fake = FakeExecutor()
    (root/'sweep_summary.md').unlink()
    res = run_sweep(SPECS, runs_root=root, execute=fake)
    assert fake.calls == [] and list(res.plan.action) == ['skip']*3 and (root/'sweep_summary.md').exists()


def test_resume_twice_keeps_every_attempt(tmp_path):
    root = tmp_path/'runs'
    spec = [SPECS[1]]
    fake = FakeExecutor(no_bluf={'smoke-erase-s0'})
    for _ in range(3):
        with pytest.raises(RuntimeError, match='bluf.md was not written'):
            run_sweep(spec, runs_root=root, execute=fake)
    d = root/'smoke-erase-s0'
    assert sorted(p.name for p in d.glob('train*.ipynb')) == ['train-attempt1.ipynb', 'train-attempt2.ipynb', 'train.ipynb']
    assert json.loads((d/'train.ipynb').read_text()) == {'attempt': 3}


def test_config_mismatch_stops_before_running(tmp_path):
    root = tmp_path/'runs'
    run_sweep(SPECS[:1], runs_root=root, execute=FakeExecutor(), overrides={'lr': 0.001})
    fake = FakeExecutor()
    with pytest.raises(ValueError, match=r"smoke-none-s0 holds a run with a different config \(lr: folder has 0.001"):
        run_sweep(SPECS, runs_root=root, execute=fake, overrides={'lr': 0.01})
    assert fake.calls == []                                     # checked before anything ran
    # a folder whose config names another seed or arm (renamed by hand) is refused as well
    d = root/'smoke-none-s0'; cfg = json.loads((d/'config.json').read_text())
    (d/'config.json').write_text(json.dumps({**cfg, 'seed': 7}))
    with pytest.raises(ValueError, match="seed: folder has 7, sweep wants 0"):
        check_run_config(d, as_spec(SPECS[0]))
    (d/'config.json').write_text('{broken')
    with pytest.raises(ValueError, match='not valid JSON'):
        run_sweep(SPECS[:1], runs_root=root, execute=fake)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='no specs'): run_sweep([], runs_root=tmp_path, execute=FakeExecutor())
    with pytest.raises(ValueError, match='duplicate'):
        run_sweep([SPECS[0], SPECS[0]], runs_root=tmp_path, execute=FakeExecutor())
    with pytest.raises(ValueError, match='belong in the specs'):
        run_sweep(SPECS, runs_root=tmp_path, execute=FakeExecutor(), overrides={'seed': 3})
    with pytest.raises(ValueError, match='JSON-serialisable'):
        run_sweep(SPECS, runs_root=tmp_path, execute=FakeExecutor(), overrides={'lr': object()})
    with pytest.raises(FileNotFoundError, match='no-such.ipynb'):
        run_sweep(SPECS, runs_root=tmp_path, notebook=tmp_path/'no-such.ipynb')
    assert not any(tmp_path.iterdir())                          # nothing was created


def test_dry_run_writes_nothing(tmp_path):
    root = tmp_path/'runs'
    run_sweep(SPECS[:1], runs_root=root, execute=FakeExecutor())
    before = sorted(p for p in root.rglob('*'))
    fake = FakeExecutor()
    res = run_sweep(SPECS, runs_root=root, execute=fake, dry_run=True)
    assert fake.calls == [] and res.summary is None
    assert list(res.plan.action) == ['skip', 'run', 'run'] and list(res.plan.status) == ['planned']*3
    assert sorted(p for p in root.rglob('*')) == before


def test_failure_stops_or_keeps_going(tmp_path):
    root = tmp_path/'runs'
    fake = FakeExecutor(fail={'smoke-erase-s0'})
    with pytest.raises(RuntimeError, match=r'smoke-erase-s0: run failed \(RuntimeError: CUDA out of memory'):
        run_sweep(SPECS, runs_root=root, execute=fake)
    assert len(fake.calls) == 2                                 # stopped at the failure
    fake = FakeExecutor(fail={'smoke-erase-s0'})
    with pytest.raises(RuntimeError, match=r'1 of 2 runs failed:\n.*smoke-erase-s0'):
        run_sweep(SPECS, runs_root=root, execute=fake, keep_going=True)
    assert [Path(c['run_dir']).name for c in fake.calls] == ['smoke-erase-s0', 'smoke-erase+random-s0']
    md = (root/'sweep_summary.md').read_text()                  # the summary is written before the failure is raised
    assert '| none |' in md and '| erase+random |' in md and '| erase |' not in md


def test_interrupt_propagates(tmp_path):
    fake = FakeExecutor(crash_after_rows={'smoke-none-s0'})
    with pytest.raises(KeyboardInterrupt):
        run_sweep(SPECS, runs_root=tmp_path, execute=fake, keep_going=True)
    assert run_state(tmp_path/'smoke-none-s0') == 'partial'


def test_cli_dry_run(tmp_path, caplog, capsys):
    with caplog.at_level(logging.INFO, logger='vhack.sweep'):
        out = cli(['--preset', 'smol', '--arms', 'none', 'erase', 'route', 'erase+random', '--seeds', '0', '1',
                   '--runs-root', str(tmp_path), '--set', 'lr=0.002', '--set', 'teacher_pool_dir=pools/a', '--dry-run'])
    assert out is None                                          # a console script's return value becomes its exit code
    would = [l.split()[-1] for l in caplog.text.splitlines() if 'would run' in l]
    names = [Path(w).name for w in would]
    assert names == [f'smol-{a}-s{s}' for s in (0, 1) for a in ('none', 'erase', 'route', 'erase+random')]
    assert not any(tmp_path.iterdir())
    for bad in (['--preset', 'smol', '--arms', 'erase+real'], ['--preset', 'smol', '--set', 'novalue'], ['--arms', 'none']):
        with pytest.raises(SystemExit) as e: cli(bad + ['--dry-run', '--runs-root', str(tmp_path)])
        assert e.value.code == 2


def test_python_m_entry_point(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'vhack.sweep', '--preset', 'smoke', '--arms', 'route', '--seeds', '3',
                        '--runs-root', str(tmp_path), '--dry-run'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'would run' in r.stderr and 'smoke-route-s3' in r.stderr


def _train_notebook(path):
    "A stand-in for nbs/06_train_loop.ipynb: the same parameters cell; fails for intervention 'route'."
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("preset = 'smoke'\nintervention = ''\nseed = -1\nv_control = ''\n"
                                       "run_dir = ''\noverrides = {}")
    params.metadata['tags'] = ['parameters']
    body = nbformat.v4.new_code_cell(
        "import json, pathlib\n"
        "assert intervention != 'route', 'route is broken in this fake'\n"
        "d = pathlib.Path(run_dir); d.mkdir(parents=True, exist_ok=True)\n"
        "cfg = dict(preset=preset, intervention=intervention, v_control=v_control, seed=seed, **overrides)\n"
        "(d/'config.json').write_text(json.dumps(cfg))\n"
        "(d/'rows.jsonl').write_text(''.join(json.dumps(dict(step=i, hack_s=0.1*i, hack_deploy=0.05*i)) + '\\n' for i in range(6)))\n"
        "(d/'bluf.md').write_text('done')")
    nb.cells = [params, body]
    nb.metadata = {}                      # as after nbdev_clean: no kernelspec, no language_info
    nbformat.write(nb, str(path))
    return path


@pytest.mark.filterwarnings('ignore::vhack.plots.SchemaNote')   # the fake rows log only three columns
def test_real_papermill_executor(tmp_path):
    "The default executor end to end (two kernel starts, ≈ 5-8 s): parameters injected, failures reported."
    pytest.importorskip('papermill')
    nb = _train_notebook(tmp_path/'train_fake.ipynb')
    specs = [('smoke', 'erase', 'random', 1), ('smoke', 'route', 'real', 1)]
    with pytest.raises(RuntimeError, match=r'1 of 2 runs failed:\n.*smoke-route-s1: run failed \(AssertionError: route is broken in this fake\); the executed notebook is .*train.ipynb'):
        run_sweep(specs, runs_root=tmp_path/'runs', notebook=nb, overrides={'lr': 0.002, 'steps': 6}, keep_going=True)
    d = tmp_path/'runs'/'smoke-erase+random-s1'
    assert json.loads((d/'config.json').read_text()) == dict(preset='smoke', intervention='erase', v_control='random',
                                                              seed=1, lr=0.002, steps=6)
    assert (d/'train.ipynb').exists() and (d/'bluf.md').exists()
    executed = nbformat.read(str(tmp_path/'runs'/'smoke-route-s1'/'train.ipynb'), 4)
    assert any('injected-parameters' in c.metadata.get('tags', []) for c in executed.cells)
    assert run_state(tmp_path/'runs'/'smoke-route-s1') == 'partial'
    assert '| erase+random |' in (tmp_path/'runs'/'sweep_summary.md').read_text()
