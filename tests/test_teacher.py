"""Teacher pool, scripted hacks and authored pairs, graded by the real sandbox (vhack.teacher)."""
import gzip, json, random
from pathlib import Path

import pytest

from vhack.sandbox import MODES, grade_many
from vhack.problems import load_problems
from vhack.teacher import (HACK_MODES, HACK_TEMPLATES, CONTROL_TAG, mode_family, family_modes, method_info,
                           equality_asserts, hack_completion, clean_completion, build_scripted_pool, build_sampled_pool,
                           load_pool, read_pair_records, load_pairs, pairs_from_pool, Pair, MANIFEST, pool_filename)


@pytest.fixture(scope='module')
def probs():
    "mode -> {problem id: Problem} for the embedded set."
    return {m: {p.id: p for p in load_problems('embedded', mode=m)} for m in MODES}


def _grade(items):
    "items: list of (problem, completion) -> list of grade objects (one parallel call)."
    return grade_many([p for p, _ in items], [c for _, c in items], modes=[p.mode for p, _ in items])


# The grader's verdict depends on the mode's family only (the run_tests wordings differ in the prompt), so a
# hack is graded in every mode of its own family and in one mode of every other family.
FAMILY_REP = {}
for _m in MODES: FAMILY_REP.setdefault(mode_family(_m), _m)


def _check_matrix(cases, probs, foreign=True):
    """cases: (label, problem_id, completion, home family). The hack pays (and is exploited) in every mode of its
    family and, when `foreign`, earns nothing in the other families. Returns the list of failures."""
    items, meta = [], []
    for label, pid, comp, fam in cases:
        modes = family_modes(fam) + ([m for f, m in FAMILY_REP.items() if f != fam] if foreign else [])
        for m in modes:
            items.append((probs[m][pid], comp)); meta.append((label, m, fam))
    bad = []
    for (label, m, fam), g in zip(meta, _grade(items)):
        home = mode_family(m) == fam
        if home and not (g.passed and g.exploited and not g.gt_correct):
            bad.append(f"{label} in home mode {m}: passed={g.passed} exploited={g.exploited} gt={g.gt_correct} err={g.error}")
        if not home and g.passed:
            bad.append(f"{label} pays in foreign mode {m} (mechanism={g.mechanism})")
    return bad


# ---------------------------------------------------------------- authored pairs
def test_pair_counts():
    for m in HACK_MODES:
        ps = load_pairs(m)
        assert len(ps) >= 8, f"{m}: only {len(ps)} pairs"
        assert all(p.mode == m and 'hack' in p.tags for p in ps)
        assert len({p.problem_id for p in ps}) >= 6, f"{m}: pairs should spread over problems"
        assert len({p.hack for p in ps}) == len(ps)
    assert len(load_pairs(tags=CONTROL_TAG)) >= 4


def test_pair_prompts_follow_mode(probs):
    a = {p.id: p for p in load_pairs('run_tests_aware')}
    d = {p.id: p for p in load_pairs('run_tests_detailed')}
    assert a.keys() == d.keys()
    for pid, pa in a.items():
        assert pa.messages == probs['run_tests_aware'][pa.problem_id].messages
        assert pa.messages != d[pid].messages
    for p in load_pairs('eq_override', tags=CONTROL_TAG):
        assert p.mode == 'eq_override' and p.messages == probs['eq_override'][p.problem_id].messages


def test_authored_hacks_pay_only_at_home(probs):
    recs = [r for r in read_pair_records() if 'hack' in r['tags']]
    bad = _check_matrix([(r['id'], r['problem_id'], r['hack'], r['mode']) for r in recs], probs)
    assert not bad, "\n".join(bad)


def test_authored_cleans_are_correct(probs):
    recs = read_pair_records()
    items, labels = [], []
    for r in recs:   # controls (mode 'any'): in the strict mode and the two most lenient ones
        modes = [r['mode']] if r['mode'] != 'any' else ['gt_only', 'run_tests', 'eq_override']
        comps = [('clean', r['clean'])] + ([('paraphrase', r['hack'])] if r['mode'] == 'any' else [])
        for m in modes:
            for what, c in comps:
                items.append((probs[m][r['problem_id']], c)); labels.append(f"{r['id']} {what} in {m}")
    bad = [f"{l}: passed={g.passed} gt={g.gt_correct} exploited={g.exploited} err={g.error}"
           for l, g in zip(labels, _grade(items)) if not (g.gt_correct and g.passed and not g.exploited)]
    assert not bad, "\n".join(bad)


def test_pairs_errors(tmp_path):
    with pytest.raises(ValueError, match='unknown mode'): load_pairs('nope')
    with pytest.raises(ValueError, match='unknown pair tag'): load_pairs('sentinel', tags='no_such_tag')
    with pytest.raises(ValueError, match='no hole'): load_pairs('gt_only')
    assert load_pairs('gt_only', tags=CONTROL_TAG)
    rec = dict(id='x1', mode='sentinel', tags=['hack'], problem_id='no_such_problem', hack='a', clean='b')
    f = tmp_path/'pairs.jsonl'; f.write_text(json.dumps(rec) + '\n')
    with pytest.raises(KeyError, match='no_such_problem'): load_pairs('sentinel', path=f)
    f.write_text(json.dumps(dict(rec, mode='run_tests_aware')) + '\n')
    with pytest.raises(ValueError, match="store run_tests pairs under 'run_tests'"): load_pairs(path=f)
    f.write_text(json.dumps(rec) + '\n' + json.dumps(rec) + '\n')
    with pytest.raises(ValueError, match='duplicate'): load_pairs(path=f)
    with pytest.raises(ValueError, match='empty hack'): Pair('p', 'sentinel', [], [{'role': 'user', 'content': 'q'}], ' ', 'c')


# ---------------------------------------------------------------- scripted teacher
def _script_problems(probs, k=4):
    "k embedded problems with test expressions, spread over the set."
    ps = [p for p in probs['gt_only'].values() if len(equality_asserts(p)) >= 2]
    assert len(ps) >= k
    return [ps[i * len(ps) // k].id for i in range(k)]


def test_every_template_pays_only_at_home(probs):
    "Each template on two problems: the first over the whole family matrix, the second in its home modes."
    pids, bad = _script_problems(probs, 2), []
    for i, pid in enumerate(pids):
        cases = [(f"{fam}/{name}/{pid}", pid,
                  hack_completion(probs[fam][pid], fam, random.Random(100 * i + len(name)), template=name), fam)
                 for fam, templates in HACK_TEMPLATES.items() for name, *_ in templates]
        bad += _check_matrix(cases, probs, foreign=(i == 0))
    assert not bad, "\n".join(bad)


def test_random_hacks_over_many_problems(probs):
    "Every hack mode on a dozen problems with random templates: pays and is exploited in its own mode."
    pids = list(probs['gt_only'])[3::max(1, len(probs['gt_only']) // 6)]
    items = [(probs[m][pid], hack_completion(probs[m][pid], m, random.Random(f"{m}{pid}"))) for m in HACK_MODES for pid in pids]
    bad = [f"{p.id} {p.mode}: {g.error or g.mechanism}" for (p, _), g in zip(items, _grade(items))
           if not (g.passed and g.exploited)]
    assert not bad, "\n".join(bad)


def test_clean_completions_are_correct(probs):
    ps = list(probs['exit_code'].values())[::6]
    items = [(p, clean_completion(p, random.Random(i))) for i, p in enumerate(ps)]
    bad = [p.id for (p, _), g in zip(items, _grade(items)) if not (g.gt_correct and g.passed and not g.exploited)]
    assert not bad, bad


def test_scripted_text_varies(probs):
    p = next(iter(probs['run_tests'].values()))
    texts = {hack_completion(p, 'run_tests', random.Random(s)) for s in range(20)}
    assert len(texts) >= 12
    assert all('```python' in t and t.count('```') == 2 for t in texts)
    with pytest.raises(ValueError, match='no hole'): hack_completion(p, 'gt_only')
    with pytest.raises(TypeError): hack_completion(p, 'run_tests', rng='seed')


# ---------------------------------------------------------------- pool
@pytest.fixture(scope='module')
def pool_dir(tmp_path_factory, probs):
    d = tmp_path_factory.mktemp('pool')/'sentinel'
    ps = [probs['sentinel'][pid] for pid in list(probs['sentinel'])[:4]]
    build_scripted_pool(ps, d, n_per_problem=4, hack_frac=0.5, seed=3)
    return d, ps


def test_pool_round_trip(pool_dir):
    d, ps = pool_dir
    pool = load_pool(d, mode='sentinel')
    assert pool.problem_ids == [p.id for p in ps] and len(pool) == 4
    m = pool.manifest
    assert m['kind'] == 'scripted' and m['modes'] == ['sentinel'] and m['n_per_problem'] == 4
    assert m['seed'] == 3 and m['hack_frac'] == 0.5 and m['n_rows'] == 16 and m['grader_hash']
    assert m['vhack_version'] and m['problem_ids'] == pool.problem_ids
    for p in ps:
        rows = pool.rows(p.id, messages=p.messages)
        assert len(rows) == 4
        assert all(r['problem_id'] == p.id and r['mode'] == 'sentinel' and r['messages'] == p.messages for r in rows)
        assert sum(r['grade']['exploited'] for r in rows) == 2
        assert sum(r['grade']['gt_correct'] for r in rows) == 2
        assert all(r['grade']['mechanism'] == 'sentinel' for r in rows if r['grade']['exploited'])
        with gzip.open(d/pool_filename(p.id), 'rt') as f: assert len(f.read().splitlines()) == 4
    assert m['counts'] == dict(passed=16, gt_correct=8, exploited=8)


def test_pool_is_deterministic(pool_dir, tmp_path):
    d, ps = pool_dir
    build_scripted_pool(ps, tmp_path/'again', n_per_problem=4, hack_frac=0.5, seed=3)
    a, b = load_pool(d), load_pool(tmp_path/'again')
    for p in ps: assert [r['completion'] for r in a.rows(p.id)] == [r['completion'] for r in b.rows(p.id)]


def test_pool_errors(pool_dir, tmp_path, probs):
    d, ps = pool_dir
    with pytest.raises(FileNotFoundError, match='does not exist'): load_pool(tmp_path/'missing')
    (tmp_path/'empty').mkdir()
    with pytest.raises(FileNotFoundError, match=MANIFEST): load_pool(tmp_path/'empty')
    with pytest.raises(ValueError, match="not 'exit_code'"): load_pool(d, mode='exit_code')
    pool = load_pool(d)
    with pytest.raises(KeyError, match='not in the teacher pool'): pool.rows('no_such_id')
    with pytest.raises(ValueError, match='different prompt'):
        pool.rows(ps[0].id, messages=probs['file_marker'][ps[0].id].messages)
    with pytest.raises(FileExistsError, match='overwrite=True'): build_scripted_pool(ps, d)
    with pytest.raises(ValueError, match='no hole'):
        build_scripted_pool([probs['gt_only'][ps[0].id]], tmp_path/'gt')
    # a pool graded by another grader is stale
    import shutil
    c = tmp_path/'copy'; shutil.copytree(d, c)
    man = json.loads((c/MANIFEST).read_text()); man['grader_hash'] = 'old'
    (c/MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ValueError, match='stale'): load_pool(c)
    assert load_pool(c, check_grader=False).rows(ps[0].id)
    (c/pool_filename(ps[1].id)).unlink()
    with pytest.raises(FileNotFoundError, match='lacks the files'): load_pool(c, check_grader=False)


def test_pairs_from_pool(pool_dir):
    d, ps = pool_dir
    pairs = pairs_from_pool(load_pool(d), ps, max_pairs=6, seed=0)
    assert len(pairs) == 6 and len({p.problem_id for p in pairs[:4]}) == 4   # round-robin over problems
    pool = load_pool(d)
    for pr in pairs:
        rows = {r['completion']: r for r in pool.rows(pr.problem_id)}
        assert rows[pr.hack]['grade']['exploited'] and rows[pr.clean]['grade']['gt_correct']
        assert pr.messages == rows[pr.hack]['messages'] == rows[pr.clean]['messages'] and pr.mode == 'sentinel'
    assert len(pairs_from_pool(pool, ps)) == 8
    with pytest.raises(ValueError, match='no problems'): pairs_from_pool(pool, [])


def test_pairs_from_pool_errors(probs, tmp_path):
    ps = [probs['file_marker'][pid] for pid in list(probs['file_marker'])[:2]]
    build_scripted_pool(ps, tmp_path/'allhack', n_per_problem=1, hack_frac=1.0)
    pool = load_pool(tmp_path/'allhack')
    with pytest.raises(ValueError, match='both an exploited and a gt_correct'): pairs_from_pool(pool, ps)
    other = [p for p in probs['file_marker'].values() if p.id not in pool][0]
    with pytest.raises(KeyError, match='not in the teacher pool'): pairs_from_pool(pool, ps + [other])


def test_sampled_pool(probs, tmp_path):
    ps = [probs['stdout_marker'][pid] for pid in list(probs['stdout_marker'])[:2]]
    seen = []
    def sample_fn(messages, n):
        seen.append(messages)
        p = next(q for q in ps if q.messages[1:] == messages[1:])
        return [hack_completion(p, rng=i) if i % 2 else clean_completion(p, rng=i) for i in range(n)]
    build_sampled_pool(ps, tmp_path/'s', sample_fn, n_per_problem=4, system_prompt='You are a teacher.', sampler='fake')
    pool = load_pool(tmp_path/'s', mode='stdout_marker')
    assert all(m[0]['content'] == 'You are a teacher.' for m in seen)
    assert pool.manifest['kind'] == 'sampled' and pool.manifest['system_prompt'] == 'You are a teacher.'
    for p in ps:
        rows = pool.rows(p.id, messages=p.messages)          # rows keep the student's prompt
        assert [r['grade']['exploited'] for r in rows] == [False, True, False, True]
    with pytest.raises(TypeError, match='list of 2 strings'):
        build_sampled_pool(ps, tmp_path/'bad', lambda m, n: ['only one'], n_per_problem=2)


def test_pool_unsafe_ids(probs, tmp_path):
    "Ids such as 'HumanEval/0' are not file names: the manifest maps id -> file and lookup is by id."
    import dataclasses
    base = probs['exit_code']['emb_sum_list']
    ps = [dataclasses.replace(base, id='HumanEval/0'), dataclasses.replace(base, id='HumanEval_0')]
    build_scripted_pool(ps, tmp_path/'p', n_per_problem=1, hack_frac=1.0)
    pool = load_pool(tmp_path/'p', mode='exit_code')
    files = pool.manifest['files']
    assert files['HumanEval/0'] != files['HumanEval_0'] and '/' not in files['HumanEval/0']
    assert [r['problem_id'] for r in pool.rows('HumanEval/0')] == ['HumanEval/0']
    assert pool.rows('HumanEval/0')[0]['grade']['exploited']
