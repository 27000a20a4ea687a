"""Tests of vhack.problems: the three problem sources, the prompts with their hints, the split, bad input,
and (through vhack.sandbox) that every canonical solution is correct and never mistaken for a hack."""
import ast, importlib.util, json
from pathlib import Path

import pytest

from vhack.sandbox import MODES, hint_for
from vhack.problems import (PASS_PHRASE, SYSTEM_PROMPT, ProblemFormatError, build_messages, canonical_completion,
                            check_to_asserts, embedded_rows, humaneval_rows, load_problems, problem_from_row,
                            process_leetcode_rows, read_jsonl, split_problems, write_jsonl, leetcode_hub_rows,
                            leetcode_bench_row)
from vhack.sandbox import grade_many

FIXTURE = Path(__file__).parent/'fixtures'/'leetcode_rows.jsonl'


@pytest.fixture(scope='module')
def emb(): return embedded_rows()

@pytest.fixture(scope='module')
def he(): return humaneval_rows(verbose=False)


def _expected(t):
    "The right-hand side value of `assert <call> == <literal>`."
    cmp = ast.parse(t).body[0].test
    assert isinstance(cmp, ast.Compare) and len(cmp.ops) == 1 and isinstance(cmp.ops[0], ast.Eq), t
    return ast.literal_eval(cmp.comparators[0])

def _plain(v):
    if type(v) in (list, tuple): return all(_plain(x) for x in v)
    if type(v) is dict: return all(_plain(k) and _plain(x) for k, x in v.items())
    return type(v) in (int, str, bool, float, type(None))


# ---- embedded set ----
def test_embedded_shape(emb):
    assert len(emb) >= 60
    ids = [r['id'] for r in emb]
    assert len(set(ids)) == len(ids)
    assert {r['difficulty'] for r in emb} == {'easy', 'medium'}
    assert sum(r['difficulty'] == 'medium' for r in emb) >= 15
    for r in emb:
        assert set(r) == {'id', 'question', 'func_name', 'starter_code', 'setup_code', 'tests', 'canonical_solution',
                          'difficulty', 'tags'}, r['id']
        assert len(r['tests']) >= 5, r['id']
        assert r['starter_code'].startswith('class Solution:\n    def ' + r['func_name'] + '(self'), r['id']
        assert 'Example' in r['question'] and len(r['question']) < 600, r['id']
        assert all(t.startswith(f"assert Solution().{r['func_name']}(") for t in r['tests']), r['id']

def test_embedded_expected_values_are_plain_and_not_constant(emb):
    for r in emb:
        vals = [_expected(t) for t in r['tests']]
        assert all(_plain(v) for v in vals), r['id']
        # a solution returning one constant cannot pass: the expected values differ
        assert len({json.dumps(v, sort_keys=True) for v in vals}) >= 2, r['id']

def test_embedded_canonicals_correct_in_every_mode(emb):
    ps = [problem_from_row(r, m) for m in MODES for r in emb]
    gs = grade_many(ps, [canonical_completion(p.canonical_solution) for p in ps])
    bad = [(p.id, p.mode, g) for p, g in zip(ps, gs) if not (g.gt_correct and g.passed and not g.exploited)]
    assert bad == []

def test_embedded_wrong_solutions_fail(emb):
    "A stub returning None is never gt_correct: the tests can fail."
    ps = [problem_from_row(r, 'gt_only') for r in emb]
    stubs = [canonical_completion(r['starter_code'] + '\n        return None\n') for r in emb]
    gs = grade_many(ps, stubs)
    assert [p.id for p, g in zip(ps, gs) if g.gt_correct] == []
    assert all(g.can_compile for g in gs)


# ---- HumanEval ----
def test_humaneval_conversion(he):
    rows, skipped = he
    assert len(rows) + len(skipped) == 164
    assert {'HumanEval/32', 'HumanEval/38', 'HumanEval/50'} <= set(skipped) and len(skipped) <= 5
    ids = [r['id'] for r in rows]
    assert len(set(ids)) == len(ids)
    for r in rows:
        assert r['tests'] and all(f"Solution().{r['func_name']}(" in t for t in r['tests']), r['id']
        assert f"def {r['func_name']}(" not in r['setup_code'], r['id']      # the completion must supply it
        compile(r['setup_code'] + '\n' + r['canonical_solution'], r['id'], 'exec')
        problem_from_row(r, 'run_tests', 'humaneval')
    r = {r['id']: r for r in rows}['humaneval_0']
    assert r['starter_code'] == ('class Solution:\n    def has_close_elements(self, numbers: List[float], '
                                 'threshold: float) -> bool:')
    assert r['tests'][0] == 'assert Solution().has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True'
    assert 'from typing import List' in r['setup_code']

def test_humaneval_canonicals_correct_in_every_mode(he):
    rows, _ = he
    ps = [problem_from_row(r, m, 'humaneval') for m in MODES for r in rows]
    gs = grade_many(ps, [canonical_completion(p.canonical_solution) for p in ps])
    bad = [(p.id, p.mode, g) for p, g in zip(ps, gs) if not (g.gt_correct and g.passed and not g.exploited)]
    assert bad == []

def test_check_to_asserts():
    src = ("import math\ndef check(candidate):\n    assert candidate(1) == 2, 'msg'\n    y = 3\n"
           "    assert candidate(y) == 4\n    assert abs(candidate(0.5) - math.pi) < 1\n    assert True\n"
           "    for i in range(2):\n        assert candidate(i) == i\n    assert [candidate(k) for k in (1, 2)] == [2, 3]\n")
    asserts, imports, dropped = check_to_asserts(src, 'Solution().f')
    assert asserts == ['assert Solution().f(1) == 2', 'assert abs(Solution().f(0.5) - math.pi) < 1',
                       'assert [Solution().f(k) for k in (1, 2)] == [2, 3]']
    assert imports == ['import math'] and dropped == 4
    # a string that merely contains "candidate(" is not rewritten
    assert check_to_asserts("def check(candidate):\n    assert candidate('candidate(') == 1\n", 'g')[0] == \
        ["assert Solution().g('candidate(') == 1"]


# ---- prompts and hints ----
def test_hint_applied_exactly_once_per_mode():
    starter = 'class Solution:\n    def f(self, x: int) -> int:\n        '
    for m in MODES:
        sys_msg, user = build_messages('Return x plus one.\n\nExample: x = 1 -> 2', 'f', starter, m)
        assert sys_msg['role'] == 'system' and sys_msg['content'] == SYSTEM_PROMPT and '```python' in SYSTEM_PROMPT
        u = user['content']
        assert u.startswith('PROBLEM:\nReturn x plus one.') and u.endswith('\n\nSOLUTION:\n')
        assert 'called f ' in u and '```python\nclass Solution:\n    def f(self, x: int) -> int:\n```' in u
        if m == 'gt_only':
            assert u.count(PASS_PHRASE) == 1
        else:
            assert PASS_PHRASE not in u
            hint = hint_for(m)
            assert hint and u.count(hint) == 1, m

def test_prompt_errors():
    with pytest.raises(ValueError, match='unknown mode'): build_messages('Q', 'f', 'class Solution: pass', 'cheat')
    with pytest.raises(ValueError, match='exactly once'):
        build_messages('Be fast and should pass all tests.', 'f', 'class Solution: pass', 'run_tests')
    with pytest.raises(ValueError, match='unknown mode'): load_problems('embedded', mode='cheat')

def test_problem_messages_carry_mode(emb):
    for m in ('gt_only', 'run_tests', 'file_marker'):
        ps = load_problems('embedded', mode=m, n=5, seed=1)
        assert {p.mode for p in ps} == {m} and {p.source for p in ps} == {'embedded'}
        assert all(len(p.messages) == 2 and p.messages[1]['role'] == 'user' for p in ps)


# ---- split and sampling ----
def test_split_disjoint_and_seeded():
    ps = load_problems('embedded', mode='gt_only')
    train, held = split_problems(ps, 20, seed=0)
    assert len(held) == 20 and len(train) == len(ps) - 20
    assert not {p.id for p in train} & {p.id for p in held}
    assert {p.id for p in train} | {p.id for p in held} == {p.id for p in ps}
    assert [p.id for p in split_problems(ps, 20, seed=0)[1]] == [p.id for p in held]
    assert [p.id for p in split_problems(ps, 20, seed=1)[1]] != [p.id for p in held]
    for bad in (0, len(ps), -1):
        with pytest.raises(ValueError): split_problems(ps, bad)
    with pytest.raises(ValueError, match='unique'): split_problems(ps + ps[:1], 3)

def test_load_n_seeded():
    a = [p.id for p in load_problems(n=12, seed=5)]
    assert a == [p.id for p in load_problems(n=12, seed=5)] and len(set(a)) == 12
    assert a != [p.id for p in load_problems(n=12, seed=6)]
    with pytest.raises(ValueError): load_problems(n=10_000)
    with pytest.raises(ValueError, match='unknown problem source'): load_problems('mbpp')


# ---- LeetCode rows ----
def test_leetcode_fixture_processing():
    raw = read_jsonl(FIXTURE)
    assert 5 <= len(raw) <= 8 and any(r['difficulty'] == 'Easy' for r in raw)
    rows = process_leetcode_rows(raw, verbose=False)
    by = {r['id']: r for r in rows}
    assert sorted(by) == [9002, 9003, 9004, 9006, 9007]        # 9001 is easy, 9005's canonical is wrong
    for r in rows:
        assert set(r) >= {'id', 'question', 'func_name', 'setup_code', 'gt_answer', 'canonical_solution',
                          'prompt_metadata', 'difficulty'}
        assert r['func_name'].startswith('Solution().') and r['difficulty'] in ('medium', 'hard')
        assert r['prompt_metadata']['starter_code'].lstrip().startswith(('class Solution', '# Definition'))
    assert len(by[9004]['gt_answer']) == 4                    # its loop is dropped, the four plain asserts stay
    assert by[9003]['gt_answer'][0] == ('assert is_same_list(Solution().swapNeighbours(head=list_node([1, 2, 3, 4, 5])), '
                                        'list_node([2, 1, 4, 3, 5]))')
    assert by[9006]['difficulty'] == 'hard'

def test_leetcode_paths_roundtrip(tmp_path):
    ps = load_problems(FIXTURE, mode='run_tests')
    assert [p.id for p in ps] == ['lc_9002', 'lc_9003', 'lc_9004', 'lc_9006', 'lc_9007']
    assert {p.source for p in ps} == {'leetcode'} and ps[0].func_name == 'longestBlock'
    # processed rows in the benchmark's schema load by path without re-grading
    path = write_jsonl(process_leetcode_rows(read_jsonl(FIXTURE), verbose=False), tmp_path/'lc.jsonl')
    qs = load_problems(path, mode='run_tests')
    assert [(p.id, p.tests, p.messages) for p in qs] == [(p.id, p.tests, p.messages) for p in ps]
    gs = grade_many(qs, [canonical_completion(p.canonical_solution) for p in qs])
    assert all(g.gt_correct and g.passed and not g.exploited for g in gs)

@pytest.mark.skipif(importlib.util.find_spec('datasets') is not None, reason='datasets is installed')
def test_hub_without_datasets_names_the_fix():
    with pytest.raises(ImportError, match=r'pip install vhack\[hub\]'): leetcode_hub_rows()
    with pytest.raises(ImportError, match=r'pip install vhack\[hub\]'): load_problems('leetcode')


# ---- bad input ----
def test_missing_fields_are_named(tmp_path, emb):
    row = dict(emb[0]); del row['tests']
    with pytest.raises(ProblemFormatError, match=r"row 'emb_sum_list'.*missing field 'tests'"): problem_from_row(row)
    hub = read_jsonl(FIXTURE)[1]; del hub['completion']
    with pytest.raises(ProblemFormatError, match=r"row 9002 .*missing field 'completion'"): process_leetcode_rows([hub])
    bench = leetcode_bench_row(read_jsonl(FIXTURE)[1])
    bench['prompt_metadata'] = {}
    p = write_jsonl([bench], tmp_path/'b.jsonl')
    with pytest.raises(ProblemFormatError, match=r"row 9002 .*prompt_metadata.starter_code"): load_problems(p)
    with pytest.raises(ProblemFormatError, match=r"row 9002.*field 'test'"):
        leetcode_bench_row(dict(read_jsonl(FIXTURE)[1], test='assert 1 == 1'))
    p = write_jsonl([row], tmp_path/'e.jsonl')            # has no 'tests' key: no schema recognised
    with pytest.raises(ProblemFormatError, match='schema'): load_problems(p)
    p = write_jsonl([emb[0], dict(emb[1], question=None)], tmp_path/'q.jsonl')
    with pytest.raises(ProblemFormatError, match=r"row 'emb_reverse_string'.*missing field 'question'"): load_problems(p)

def test_malformed_rows(tmp_path, emb):
    with pytest.raises(ProblemFormatError, match='not a single assert'): problem_from_row(dict(emb[0], tests=['x = 1']))
    with pytest.raises(ProblemFormatError, match='non-empty list'): problem_from_row(dict(emb[0], tests=[]))
    with pytest.raises(ProblemFormatError, match="field 'id'"): problem_from_row(dict(emb[0], id='HumanEval/0'))
    p = tmp_path/'bad.jsonl'; p.write_text(json.dumps(emb[0]) + '\n{not json\n')
    with pytest.raises(ProblemFormatError, match=r'bad.jsonl:2'): load_problems(p)
    p = write_jsonl([emb[0], emb[0]], tmp_path/'dup.jsonl')
    with pytest.raises(ProblemFormatError, match='duplicate'): load_problems(p)
    with pytest.raises(FileNotFoundError): load_problems(tmp_path/'none.jsonl')
