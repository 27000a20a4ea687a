"Tests for vhack.plots: reading run folders (hostile ones included), the summary table, the figures."
import json, math, warnings
from pathlib import Path

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from vhack.plots import (ROW_COLUMNS, RUN_COLUMNS, ARM_COLORS, RunFolderWarning, SchemaNote, arm_label, parse_arm,
                         arm_palette, arm_order, read_run, load_runs, synthetic_runs, summary_table,
                         summary_markdown, plot_hack_solve, plot_cosines, plot_reward_overlap, plot_metrics,
                         save_figure, picker, make_figures, numeric_metrics)


def full_row(step, **kw):
    "A row with every schema column, all null except `step`, updated with `kw`."
    r = {c: None for c in ROW_COLUMNS}
    r['step'] = step
    r.update(kw)
    return r


def write_run(folder, rows=None, config=None, bluf=False, raw_rows=None):
    folder = Path(folder); folder.mkdir(parents=True, exist_ok=True)
    if config is not None: (folder/'config.json').write_text(json.dumps(config))
    if raw_rows is not None: (folder/'rows.jsonl').write_text(raw_rows)
    elif rows is not None: (folder/'rows.jsonl').write_text(''.join(json.dumps(r)+'\n' for r in rows))
    if bluf: (folder/'bluf.md').write_text('done\n')
    return folder


def cfg(intervention='erase', v_control='real', seed=0, preset='smoke', **kw):
    return dict(preset=preset, intervention=intervention, v_control=v_control, seed=seed, steps=3, v_hack_k=4,
                model='tiny', eval_ablate_every=2, **kw)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close('all')


@pytest.fixture
def demo(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        synthetic_runs(tmp_path/'runs', broken=True)
        df = load_runs(str(tmp_path/'runs'/'*'))
    return tmp_path, df


# ---- arms and colours -------------------------------------------------------------------------------------------

def test_arm_label_roundtrip():
    for i in ('none', 'erase', 'route'):
        for v in ('real', 'random', 'shuffled', 'nonhack'):
            assert parse_arm(arm_label(i, v)) == (i, v)
    assert arm_label('route') == 'route' and arm_label('erase', 'random') == 'erase+random'
    for bad in ('erase+real', 'erasee', 'erase+gauss', ''):
        with pytest.raises(ValueError): parse_arm(bad)


def test_palette_fixed_per_arm():
    assert arm_palette(['route', 'none'])['route'] == arm_palette(['route', 'erase', 'erase+random'])['route']
    assert arm_order(['erase+random', 'route', 'zeta', 'none', 'erase', 'alpha']) == \
        ['none', 'erase', 'route', 'erase+random', 'alpha', 'zeta']
    assert len(set(ARM_COLORS.values())) == len(ARM_COLORS)
    assert arm_palette(['zeta'])['zeta'] == arm_palette(['none', 'zeta'])['zeta']   # unknown arm: stable colour


# ---- reading ----------------------------------------------------------------------------------------------------

def test_load_runs_tidy(demo):
    tmp, df = demo
    assert list(df.columns[:len(RUN_COLUMNS)]) == RUN_COLUMNS
    assert all(c in df.columns for c in ROW_COLUMNS)
    assert len(df) == 8*24 and df.groupby('run_id').size().eq(24).all()
    assert set(df.arm) == {'none', 'erase', 'route', 'erase+random'}
    assert list(df.arm.unique()) == ['none', 'erase', 'route', 'erase+random']   # canonical order
    assert df.seed.dtype.kind == 'i' and df.step.dtype.kind == 'i'
    assert all(df[c].dtype == float for c in ROW_COLUMNS[1:])
    # deploy columns are measured only on eval steps (every 4 + the last): 7 of 24 per run
    assert df.groupby('run_id').hack_deploy.count().eq(7).all()
    assert df[df.arm == 'none'][['cin_s', 'cout', 'basis_overlap']].isna().all().all()
    assert df.finished.all()
    assert set(df.attrs['skipped']) == {str(tmp/'runs'/'demo-started-s9'), str(tmp/'runs'/'demo-noconfig-s9')}


def test_empty_glob_names_the_glob(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothing-here'):
        load_runs(str(tmp_path/'nothing-here'/'*'))
    (tmp_path/'only-a-file.md').write_text('x')   # files are not runs
    with pytest.raises(FileNotFoundError, match='only-a-file'):
        load_runs(str(tmp_path/'only-a-file*'))
    with pytest.raises(FileNotFoundError, match='missing-run'):
        load_runs([str(tmp_path/'missing-run')])
    with pytest.raises(ValueError, match='empty list'):
        load_runs([])


def test_folder_without_rows_or_config_is_skipped(tmp_path):
    good = write_run(tmp_path/'r'/'good', [full_row(0, hack_s=0.1), full_row(1, hack_s=0.2)], cfg())
    norows = write_run(tmp_path/'r'/'norows', None, cfg(seed=1))
    emptyrows = write_run(tmp_path/'r'/'emptyrows', raw_rows='\n\n', config=cfg(seed=2))
    noconf = write_run(tmp_path/'r'/'noconf', [full_row(0)])
    (tmp_path/'r'/'empty').mkdir()
    with pytest.warns(RunFolderWarning) as rec:
        df = load_runs(str(tmp_path/'r'/'*'))
    msgs = [str(w.message) for w in rec]
    assert any(str(norows) in m and 'no rows.jsonl' in m for m in msgs)
    assert any(str(emptyrows) in m and 'holds no rows' in m for m in msgs)
    assert any(str(noconf) in m and 'no config.json' in m for m in msgs)
    assert any(str(tmp_path/'r'/'empty') in m for m in msgs)
    assert list(df.run_id.unique()) == ['good'] and list(df.hack_s) == [0.1, 0.2]
    assert not df.finished.any()


def test_all_folders_bad_is_an_error(tmp_path):
    write_run(tmp_path/'r'/'a', None, cfg())
    with pytest.warns(RunFolderWarning), pytest.raises(ValueError, match='none of the 1 run folder'):
        load_runs(str(tmp_path/'r'/'*'))


def test_folder_of_runs_hint(tmp_path):
    write_run(tmp_path/'runs'/'x', [full_row(0)], cfg())
    with pytest.warns(RunFolderWarning, match=r"folder of runs: pass '.*runs/\*'"), pytest.raises(ValueError):
        load_runs(tmp_path/'runs')


def test_old_schema_columns_are_nan_with_a_note(tmp_path):
    new = write_run(tmp_path/'r'/'new', [full_row(0, hack_s=0.1, cout_update=0.3, hk_run_tests=0.1)], cfg(), bluf=True)
    old_cfg = {k: v for k, v in cfg(seed=1).items() if k != 'v_control'}
    old = write_run(tmp_path/'r'/'old', [dict(step=0, hack_s=0.5, reward=1.0), dict(step=1, hack_s=0.6, reward=2.0)],
                    old_cfg)
    with pytest.warns(SchemaNote) as rec:
        df = load_runs(str(tmp_path/'r'/'*'))
    msgs = [str(w.message) for w in rec]
    assert any(str(old) in m and 'cout_update' in m and 'cin_null' in m for m in msgs)
    assert any(str(old) in m and "'v_control'" in m for m in msgs)
    assert not any(str(new) + ':' in m for m in msgs)
    o = df[df.run_id == 'old']
    assert o.arm.eq('erase').all() and o.v_control.eq('real').all()
    assert o.cout_update.isna().all() and o.hk_run_tests.isna().all() and list(o.reward) == [1.0, 2.0]
    assert df[df.run_id == 'new'].finished.all() and not o.finished.any()


def test_nulls_stay_nan_and_booleans_become_numbers(tmp_path):
    write_run(tmp_path/'a', [full_row(0, hack_s=None, fired=True), full_row(1, hack_s=0.4, fired=False)], cfg())
    df = load_runs(tmp_path/'a')
    assert math.isnan(df.hack_s[0]) and df.hack_s[1] == 0.4
    assert list(df.fired) == [1.0, 0.0]


def test_torn_last_line_is_dropped_with_a_warning(tmp_path):
    good = ''.join(json.dumps(full_row(i, hack_s=0.1*i))+'\n' for i in range(3))
    write_run(tmp_path/'a', raw_rows=good + '{"step": 3, "hack_', config=cfg())
    with pytest.warns(RunFolderWarning, match='torn last line 4'):
        df = load_runs(tmp_path/'a')
    assert list(df.step) == [0, 1, 2]


def test_damaged_middle_line_skips_the_run(tmp_path):
    lines = [json.dumps(full_row(0)), 'garbage', json.dumps(full_row(2))]
    bad = write_run(tmp_path/'r'/'bad', raw_rows='\n'.join(lines)+'\n', config=cfg())
    write_run(tmp_path/'r'/'ok', [full_row(0, hack_s=0.2)], cfg(seed=1))
    with pytest.warns(RunFolderWarning, match=r'bad/rows.jsonl: line 2 is not valid JSON'):
        df = load_runs(str(tmp_path/'r'/'*'))
    assert list(df.run_id.unique()) == ['ok']
    assert str(bad) in df.attrs['skipped']


def test_non_numeric_values_and_bad_config_skip_the_run(tmp_path):
    write_run(tmp_path/'r'/'lists', [full_row(0, cin=[0.1, 0.2])], cfg())
    write_run(tmp_path/'r'/'unknown-arm', [full_row(0)], cfg(intervention='obliterate'))
    write_run(tmp_path/'r'/'noseed', [full_row(0)], {k: v for k, v in cfg().items() if k != 'seed'})
    write_run(tmp_path/'r'/'nostep', [{'hack_s': 0.1}], cfg())
    write_run(tmp_path/'r'/'nullseed', [full_row(0)], cfg(seed=None))
    write_run(tmp_path/'r'/'ok', [full_row(0)], cfg())
    with pytest.warns(RunFolderWarning) as rec:
        df = load_runs(str(tmp_path/'r'/'*'))
    msgs = ' | '.join(str(w.message) for w in rec)
    assert "column 'cin' holds non-numbers" in msgs
    assert 'unknown-arm' in msgs and 'unknown intervention' in msgs
    assert "no 'seed' field" in msgs
    assert "needs a 'step'" in msgs
    assert "'seed' must be an integer, got None" in msgs
    assert list(df.run_id.unique()) == ['ok']


def test_resumed_run_keeps_later_duplicate_steps(tmp_path):
    rows = [full_row(0, hack_s=0.0), full_row(1, hack_s=0.1), full_row(1, hack_s=0.9), full_row(2, hack_s=0.2)]
    write_run(tmp_path/'a', rows, cfg())
    with pytest.warns(RunFolderWarning, match=r'steps \[1\] logged twice'):
        df = load_runs(tmp_path/'a')
    assert list(df.hack_s) == [0.0, 0.9, 0.2]


def test_extra_columns_kept_and_same_names_disambiguated(tmp_path):
    write_run(tmp_path/'x'/'run', [full_row(0, hk_eq_override=0.5, note='hi')], cfg())
    write_run(tmp_path/'y'/'run', [full_row(0)], cfg(seed=1))
    df = load_runs([str(tmp_path/'x'/'*'), tmp_path/'y'/'run'])
    assert sorted(df.run_id) == ['x/run', 'y/run']
    assert 'hk_eq_override' in df and 'note' in df
    assert list(df.columns).index('hk_eq_override') < list(df.columns).index('note')


# ---- summary ----------------------------------------------------------------------------------------------------

def test_summary_table_by_hand(tmp_path):
    # two erase seeds; deploy measured on steps 0, 2, 4 only; last=2
    for seed, (h, d) in enumerate([((0.1, 0.2, 0.3, 0.4, 0.5), (0.0, 0.2, 0.4)),
                                   ((0.3, 0.4, 0.5, 0.6, 0.7), (0.1, 0.3, 0.7))]):
        rows = [full_row(i, hack_s=h[i], hack_deploy=d[i//2] if i % 2 == 0 else None) for i in range(5)]
        write_run(tmp_path/'r'/f'erase-s{seed}', rows, cfg(seed=seed), bluf=seed == 0)
    write_run(tmp_path/'r'/'none-s0', [full_row(i, hack_s=1.0) for i in range(5)], cfg('none'))
    df = load_runs(str(tmp_path/'r'/'*'))
    tab = summary_table(df, last=2)
    assert list(tab.index) == ['none', 'erase']
    a, b = np.mean([0.4, 0.5]), np.mean([0.6, 0.7])           # hack_s last 2 steps per seed
    assert tab.loc['erase', ('hack_s', 'mean')] == pytest.approx((a+b)/2)
    assert tab.loc['erase', ('hack_s', 'sd')] == pytest.approx(np.std([a, b], ddof=1))
    a, b = np.mean([0.2, 0.4]), np.mean([0.3, 0.7])           # hack_deploy: last 2 *measured* values
    assert tab.loc['erase', ('hack_deploy', 'mean')] == pytest.approx((a+b)/2)
    assert tab.loc['erase', ('runs', 'n')] == 2 and tab.loc['erase', ('runs', 'finished')] == 1
    assert tab.loc['none', ('hack_s', 'mean')] == 1.0 and math.isnan(tab.loc['none', ('hack_s', 'sd')])
    assert tab.loc['none', ('hack_deploy', 'n')] == 0 and math.isnan(tab.loc['none', ('hack_deploy', 'mean')])
    md = summary_markdown(tab)
    erase_line = next(l for l in md.splitlines() if l.startswith('| erase'))
    assert f"{(0.45+0.65)/2:.3f} ± {np.std([0.45, 0.65], ddof=1):.3f}" in erase_line
    none_line = next(l for l in md.splitlines() if l.startswith('| none'))
    assert '1.000 (n=1)' in none_line and '–' in none_line
    assert 'last-2' in md
    with pytest.raises(ValueError, match='positive int'): summary_table(df, last=0)
    with pytest.raises(ValueError, match='load_runs table'): summary_table(pd.DataFrame({'x': [1]}))


# ---- figures ----------------------------------------------------------------------------------------------------

def _colors(ax):
    return {matplotlib.colors.to_hex(l.get_color()) for l in ax.get_lines() if l.get_linestyle() == '-'}


def test_hack_solve_figure(demo):
    _, df = demo
    fig = plot_hack_solve(df)
    assert len(fig.axes) == 6
    pal = arm_palette(df.arm)
    for ax in fig.axes:
        assert _colors(ax) == set(pal.values())                # one fixed colour per arm
        assert len(ax.get_lines()) == 8 + 4                     # 8 seeds thin + 4 means
    thin = [l for l in fig.axes[0].get_lines() if l.get_linewidth() < 1]
    assert len(thin) == 8
    # only the route subset: its colour and nothing else
    fig = plot_hack_solve(df, arms=['route'])
    assert _colors(fig.axes[2]) == {ARM_COLORS['route']}


def test_figures_with_missing_metrics(tmp_path):
    # a run that logged only hack_s and reward: every other panel says so instead of failing
    write_run(tmp_path/'a', [dict(step=i, hack_s=0.1*i, reward=float(i)) for i in range(4)], cfg('none'))
    with pytest.warns(SchemaNote):
        df = load_runs(tmp_path/'a')
    fig = plot_hack_solve(df)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert 'no data for hack_deploy' in texts and 'no data for solve_s' in texts and 'no data for hack_s' not in texts
    fig = plot_cosines(df)
    assert 'no √(k/r) null recorded' in [t.get_text() for t in fig.axes[0].texts]
    fig = plot_reward_overlap(df)
    assert [t.get_text() for t in fig.axes[1].texts] == ['no data for basis_overlap']


def test_cosines_null_line(demo, tmp_path):
    _, df = demo
    fig = plot_cosines(df)
    for ax in fig.axes:
        dashed = [l for l in ax.get_lines() if l.get_linestyle() == '--']
        assert len(dashed) == 1 and np.allclose(dashed[0].get_ydata(), math.sqrt(4/64))
    # two different nulls: one dashed line per arm, in the arm's colour
    write_run(tmp_path/'n'/'a', [full_row(i, cin_s=0.3, cin_null=0.1) for i in range(3)], cfg('erase'))
    write_run(tmp_path/'n'/'b', [full_row(i, cin_s=0.3, cin_null=0.2) for i in range(3)], cfg('route'))
    fig = plot_cosines(load_runs(str(tmp_path/'n'/'*')))
    dashed = [l for l in fig.axes[0].get_lines() if l.get_linestyle() == '--']
    assert {matplotlib.colors.to_hex(l.get_color()) for l in dashed} == {ARM_COLORS['erase'], ARM_COLORS['route']}


def test_selection_errors(demo):
    _, df = demo
    with pytest.raises(ValueError, match='not in the table'): plot_hack_solve(df, arms=['route+nonhack'])
    with pytest.raises(ValueError, match='not in the table'): plot_cosines(df, runs=['nope'])
    with pytest.raises(ValueError, match='at least one metric'): plot_metrics(df, [])


def test_plot_metrics_grid(demo):
    _, df = demo
    fig = plot_metrics(df, ['hack_s', 'kl', 'gn', 'lr'], ncols=3)
    assert sum(ax.get_visible() for ax in fig.axes) == 4


def test_save_figure(demo, tmp_path):
    _, df = demo
    svgs = []
    for i in range(2):
        fig = plot_reward_overlap(df)
        png, svg = save_figure(fig, 'reward_overlap', tmp_path/f'out{i}'/'deep')
        assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and svg.read_text().lstrip().startswith('<?xml')
        svgs.append(svg.read_bytes())
        plt.close(fig)
    assert svgs[0] == svgs[1]
    for bad in ('', 'a/b', 'x.svg', 'x.png'):
        with pytest.raises(ValueError, match='bare file stem'): save_figure(fig, bad, tmp_path)


def test_make_figures(demo, tmp_path):
    tmp, _ = demo
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        summary, paths = make_figures(str(tmp/'runs'/'*'), tmp_path/'figs', prefix='x_')
    assert sorted(p.name for p in paths) == sorted([f'x_{n}.{e}' for n in ('hack_solve', 'cosines', 'reward_overlap')
                                                    for e in ('png', 'svg')] + ['x_summary.md', 'x_rows.csv'])
    assert all(p.stat().st_size > 0 for p in paths)
    rows = pd.read_csv(tmp_path/'figs'/'x_rows.csv')
    assert {'run_id', 'arm', 'seed', 'step', 'hack_deploy'} <= set(rows.columns) and len(rows) > 0
    assert 'route' in (tmp_path/'figs'/'x_summary.md').read_text()
    assert list(summary.index) == ['none', 'erase', 'route', 'erase+random']


def test_picker_constructs(demo):
    pytest.importorskip('ipywidgets')
    _, df = demo
    box = picker(df)
    runs_w, arms_w, mets_w = box.children[0].children
    assert set(runs_w.options) == set(df.run_id) and list(arms_w.options) == arm_order(df.arm)
    assert set(mets_w.value) == {'hack_s', 'hack_deploy', 'solve_s', 'solve_deploy'}
    assert 'hk_run_tests' in mets_w.options and 'step' not in mets_w.options and 'seed' not in mets_w.options
    arms_w.value = ('erase',)          # redraws
    mets_w.value = ()                  # an empty selection is reported, not an exception
    assert numeric_metrics(df) == list(mets_w.options)
