"Tests of `vhack.grpo` on the tiny model: advantages, loss, split gradients, quarantine untouched, NaN detection."
import math, random, warnings
from collections import namedtuple
from dataclasses import dataclass
from types import SimpleNamespace as NS

import pytest
import torch

import vhack.grpo as grpo
from vhack.grpo import (Sampling, Rollout, generate, trim_at_eos, grade_dict, split_group, draw_teacher_rows,
                        collect_group, collect_groups, group_advantages, grpo_loss, completion_ids, grpo_backward, rollout_stats,
                        mechanism_counts, eval_hack_solve, make_sampler, with_system)
from vhack.models import load_model, render_prompt, encode
from vhack.adapter import wrap, token_logprobs, ref_logprobs

MSGS = [{'role': 'system', 'content': 'Write Python.'}, {'role': 'user', 'content': 'Add two numbers.'}]
MSGS_B = [{'role': 'system', 'content': 'Write Python.'}, {'role': 'user', 'content': 'Reverse a string.'}]
TEACHER = ['def solve(x):\n    return x + 1  # the teacher writes more than a few tokens',
           'hack hack hack hack hack hack hack hack hack hack hack hack', 'x', 'print(1)']


def fake_grade(problems, completions):
    "Reward 3.5 when the text has an 'e' (a hack if it also has an 'a'), else 0.5."
    out = []
    for c in completions:
        ok = 'e' in c
        out.append(dict(reward=3.5 if ok else 0.5, format_ok=True, can_compile=True, passed=ok,
                        gt_correct=ok and 'a' not in c, exploited=ok and 'a' in c,
                        mechanism='fake' if ok and 'a' in c else None))
    return out


def problem(pid='p0', messages=MSGS): return NS(id=pid, messages=messages, mode='fake')


def pool(pid='p0', messages=MSGS, texts=TEACHER):
    return [dict(problem_id=pid, mode='fake', messages=messages, completion=c, grade=g)
            for c, g in zip(texts, fake_grade(None, texts))]


@pytest.fixture(scope='module')
def tiny():
    m, t = load_model('tiny'); return m, t, wrap(m)


@pytest.fixture(scope='module')
def tiny64():
    "A float64 tiny model with random knob values (so the KL term has a gradient)."
    m, t = load_model('tiny', dtype='float64'); W = wrap(m)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k in W.values(): k.dS.copy_(torch.randn(k.r, generator=g) * 0.3)
    return m, t, W


def reset(W):
    for k in W.values(): k.dS.grad = None; k.dS_hack.grad = None


@pytest.fixture(scope='module')
def grp64(tiny64):
    "4 student rollouts (≤ 10 tokens) + 2 teacher rows of the float64 model, with reward variance."
    m, t, W = tiny64
    torch.manual_seed(0)
    grp = collect_group(m, W, t, problem(), pool(), 4, 2, Sampling(10), fake_grade, rng=0)
    grp[0].reward, grp[1].reward = 3.5, 0.5
    return tuple(grp)


def close(a, b, rtol=1e-5):
    assert float((a - b).norm()) <= rtol * float(b.norm()) + 1e-12, (float((a - b).norm()), float(b.norm()))


def joint_grad(m, W, t, rows, beta, unbiased, max_new, temperature, scale=1.0, clip=0.2):
    "Reference: the whole group's loss in one batch and one backward."
    reset(W)
    adv = group_advantages([r.reward for r in rows], unbiased)
    b = encode(t, [render_prompt(t, r.messages) for r in rows], [completion_ids(t, r, max_new)[0] for r in rows])
    ref = ref_logprobs(m, W, b, temperature)
    loss, _ = grpo_loss(token_logprobs(m, b, temperature), None, ref, adv, b['completion_mask'], beta, clip,
                        unbiased, max_new)
    (loss * scale).backward()
    g = {n: k.dS.grad.clone() for n, k in W.items()}
    reset(W)
    return g, float(loss.detach())


# ---------------------------------------------------------------- sampling and generation
@pytest.mark.parametrize('kw,msg', [(dict(max_new=0), 'max_new=0'), (dict(max_new=4, top_p=0), 'top_p=0'),
                                    (dict(max_new=4, top_p=1.5), 'top_p=1.5'), (dict(max_new=4, top_k=-1), 'top_k=-1'),
                                    (dict(max_new=4, temperature=-1), 'temperature=-1'),
                                    (dict(max_new=4, top_k=2.5), 'top_k=2.5')])
def test_sampling_rejects(kw, msg):
    with pytest.raises(ValueError, match=msg): Sampling(**kw)


def test_sampling_defaults_are_qwen3():
    s = Sampling(16)
    assert (s.temperature, s.top_p, s.top_k) == (0.6, 0.95, 20)
    assert s.generate_kwargs()['top_k'] == 20 and s.generate_kwargs()['do_sample']
    assert Sampling(4, temperature=0).generate_kwargs() == dict(max_new_tokens=4, do_sample=False)


def test_trim_at_eos():
    assert trim_at_eos([1, 2, 9, 0, 0], [9]) == [1, 2, 9]
    assert trim_at_eos([1, 2, 3], [9]) == [1, 2, 3]
    assert trim_at_eos([7, 9, 7], [7, 9]) == [7]


def test_generate_shapes_and_seed(tiny):
    m, t, W = tiny
    s = Sampling(6)
    torch.manual_seed(0); a = generate(m, W, t, [MSGS, MSGS_B], 3, s, batch_size=4)
    torch.manual_seed(0); b = generate(m, W, t, [MSGS, MSGS_B], 3, s, batch_size=2)
    assert [len(x) for x in a] == [3, 3]
    for text, ids in a[0] + a[1]:
        assert 1 <= len(ids) <= 6 and t.eos_token_id not in ids[:-1] and text == t.decode(ids, skip_special_tokens=True)
    assert len({tuple(ids) for _, ids in a[0]}) > 1                       # sampled, not greedy
    torch.manual_seed(0)
    assert generate(m, W, t, [MSGS, MSGS_B], 3, s, batch_size=4) == a     # seeded by torch's RNG
    assert len(b) == 2 and all(len(x) == 3 for x in b)


def test_generate_stops_at_eos(tiny):
    m, t, W = tiny
    bias = torch.zeros(m.lm_head.out_features); bias[t.eos_token_id] = 100.
    m.lm_head.bias = torch.nn.Parameter(bias, requires_grad=False)
    try: out = generate(m, W, t, [MSGS], 2, Sampling(8))[0]
    finally: m.lm_head.bias = None
    assert out == [('', [t.eos_token_id])] * 2


def test_generate_uses_the_knobs_and_restores_weights(tiny):
    m, t, W = tiny
    greedy = Sampling(8, temperature=0)
    W0 = {n: k.linear.weight.detach().clone() for n, k in W.items()}
    base = generate(m, W, t, [MSGS], 1, greedy)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for k in W.values(): k.dS_hack.copy_(torch.randn(k.r, generator=g) * 2)
    try:
        moved = generate(m, W, t, [MSGS], 1, greedy)
        assert moved != base                                             # the quarantine is in the sampled model
        assert generate(m, None, t, [MSGS], 1, greedy) == moved          # wrappers=None: as is (hooks, unmerged)
    finally:
        with torch.no_grad():
            for k in W.values(): k.dS_hack.zero_()
    assert all(torch.equal(W0[n], k.linear.weight) for n, k in W.items())


@pytest.mark.parametrize('args,msg', [(dict(n=0), 'n=0'), (dict(batch_size=0), 'batch_size=0'),
                                      (dict(messages_list=[]), 'non-empty'), (dict(sampling=dict(max_new=3)), 'Sampling')])
def test_generate_rejects(tiny, args, msg):
    m, t, W = tiny
    kw = dict(messages_list=[MSGS], n=1, sampling=Sampling(3), batch_size=2) | args
    with pytest.raises((ValueError, TypeError), match=msg): generate(m, W, t, **kw)


# ---------------------------------------------------------------- grades, groups
def test_grade_dict_accepts_forms():
    @dataclass
    class G: reward: float; gt_correct: bool; exploited: bool; mechanism: str = None; detail: dict = None
    NT = namedtuple('NT', 'reward gt_correct exploited')
    for g in (G(1., True, False), NT(1., True, False), NS(reward=1., gt_correct=True, exploited=False),
              dict(reward=1, gt_correct=True, exploited=False, extra=3)):
        d = grade_dict(g)
        assert set(d) == set(grpo.GRADE_FIELDS) and d['reward'] == 1 and d['gt_correct'] is True
    with pytest.raises(ValueError, match=r"lacks \['exploited'\]"): grade_dict(dict(reward=1., gt_correct=True))
    with pytest.raises(ValueError, match='finite'): grade_dict(dict(reward=float('nan'), gt_correct=True, exploited=False))


@pytest.mark.parametrize('G,mix,want', [(8, 0.5, (4, 4)), (6, 0., (6, 0)), (2, 1., (0, 2)), (4, 0.625, (2, 2)),
                                        (6, 0.25, (4, 2)), (5, 0.2, (4, 1))])
def test_split_group(G, mix, want):
    with warnings.catch_warnings():
        warnings.simplefilter('error'); assert split_group(G, mix) == want


def test_split_group_warns_and_rejects():
    with pytest.warns(UserWarning, match=r'G_t = round\(0.5\) = 0'): assert split_group(4, 0.125) == (4, 0)
    with pytest.warns(UserWarning, match='no student rollouts'): assert split_group(2, 0.75) == (0, 2)
    for G, mix, msg in [(4, 1.5, 'mix_ratio=1.5'), (4, -0.1, 'mix_ratio=-0.1'), (0, 0.5, 'G=0'), (2.0, 0.5, 'G=2.0')]:
        with pytest.raises(ValueError, match=msg): split_group(G, mix)


def test_collect_group(tiny):
    m, t, W = tiny
    tm = {}
    torch.manual_seed(0)
    grp = collect_group(m, W, t, problem(), pool(), 3, 2, Sampling(8), fake_grade, rng=random.Random(5), timings=tm)
    assert [r.source for r in grp] == ['student'] * 3 + ['teacher'] * 2
    assert all(len(r.token_ids) <= 8 for r in grp[:3]) and all(r.token_ids is None for r in grp[3:])
    assert all(r.messages == MSGS and r.problem_id == 'p0' for r in grp) and set(tm) == {'t_gen', 't_grade'}
    assert len({r.completion for r in grp[3:]}) == 2                      # without replacement
    again = draw_teacher_rows(problem(), pool(), 2, 5)
    assert [r.completion for r in again] == [r.completion for r in grp[3:]]   # seeded
    by_text = {c: g for c, g in zip(TEACHER, fake_grade(None, TEACHER))}
    for r in grp[3:]: assert r.reward == by_text[r.completion]['reward']      # the stored grade is kept
    # grade of students: the fake grader's verdict
    for r in grp[:3]: assert r.reward == fake_grade(None, [r.completion])[0]['reward']
    only_t = collect_group(m, W, t, problem(), pool(), 0, 3, Sampling(8), fake_grade, rng=0)
    assert [r.source for r in only_t] == ['teacher'] * 3
    only_s = collect_group(m, W, t, problem(), None, 2, 0, Sampling(8), fake_grade)   # no rng needed without teacher
    assert [r.source for r in only_s] == ['student'] * 2


def test_collect_group_errors(tiny):
    m, t, W = tiny
    s = Sampling(4)
    with pytest.raises(ValueError, match='has none'): collect_group(m, W, t, problem(), [], 1, 1, s, fake_grade, 0)
    with pytest.raises(ValueError, match='at least one row'): collect_group(m, W, t, problem(), [], 0, 0, s, fake_grade, 0)
    with pytest.raises(ValueError, match='G_s=-1'): collect_group(m, W, t, problem(), [], -1, 1, s, fake_grade, 0)
    with pytest.raises(ValueError, match="belongs to problem 'p0'"): draw_teacher_rows(problem('p1'), pool(), 1, 0)
    with pytest.raises(ValueError, match='stale'): draw_teacher_rows(problem('p0', MSGS_B), pool(), 1, 0)
    with pytest.raises(TypeError, match='seeded'): draw_teacher_rows(problem(), pool(), 1, None)
    with pytest.raises(ValueError, match="lacks 'grade'"):
        draw_teacher_rows(problem(), [dict(problem_id='p0', completion='x')], 1, 0)
    with pytest.warns(UserWarning, match='with replacement'): assert len(draw_teacher_rows(problem(), pool(), 6, 0)) == 6
    with pytest.raises(ValueError, match='returned 1 grades for 2'):
        collect_group(m, W, t, problem(), None, 2, 0, s, lambda ps, cs: fake_grade(ps, cs)[:1])


def test_collect_groups(tiny):
    m, t, W = tiny
    calls = []
    def grade_fn(ps, cs): calls.append([p.id for p in ps]); return fake_grade(ps, cs)
    pb = problem('p1', MSGS_B)
    torch.manual_seed(0)
    gs = collect_groups(m, W, t, [problem(), pb], [pool(), pool('p1', MSGS_B)], 2, 2, Sampling(6), grade_fn,
                        rng=random.Random(3), batch_size=3)
    assert calls == [['p0', 'p0', 'p1', 'p1']]                             # one grading call for the step
    assert [[(r.problem_id, r.source) for r in g] for g in gs] == \
           [[('p0', 'student')] * 2 + [('p0', 'teacher')] * 2, [('p1', 'student')] * 2 + [('p1', 'teacher')] * 2]
    assert all(r.messages == MSGS_B for r in gs[1])
    rng = random.Random(3)                                                  # draws in problem order, as one by one
    seq = [draw_teacher_rows(problem(), pool(), 2, rng), draw_teacher_rows(pb, pool('p1', MSGS_B), 2, rng)]
    assert [[r.completion for r in g[2:]] for g in gs] == [[r.completion for r in x] for x in seq]
    assert [len(g) for g in collect_groups(m, W, t, [problem(), pb], None, 1, 0, Sampling(4), fake_grade)] == [1, 1]
    with pytest.raises(ValueError, match='2 problems but 1 lists'):
        collect_groups(m, W, t, [problem(), pb], [pool()], 1, 1, Sampling(4), fake_grade, 0)
    with pytest.raises(ValueError, match='at least one problem'): collect_groups(m, W, t, [], [], 1, 0, Sampling(4), fake_grade)


# ---------------------------------------------------------------- advantages
def test_advantages_both_ways():
    R = [3.5, 0.5, 0.5, 0.5]
    assert group_advantages(R).tolist() == [2.25, -0.75, -0.75, -0.75]
    A = group_advantages(R, unbiased=False, eps=1e-4)
    torch.testing.assert_close(A, torch.tensor([2.25, -0.75, -0.75, -0.75], dtype=torch.float64) / (1.5 + 1e-4))
    assert abs(float(A.sum())) < 1e-12
    A0 = group_advantages([1., 2., 3.], unbiased=False, eps=0.)
    torch.testing.assert_close(A0, torch.tensor([-1., 0., 1.], dtype=torch.float64))   # Bessel std of 1,2,3 is 1


@pytest.mark.parametrize('R', [[3.5, 3.5, 3.5], [0.], [0.5, 0.5]])
def test_zero_variance_is_none(R):
    assert group_advantages(R) is None and group_advantages(R, unbiased=False) is None


def test_advantages_reject():
    with pytest.raises(ValueError, match='index 1'): group_advantages([0., float('inf')])
    with pytest.raises(ValueError, match='empty'): group_advantages([])


# ---------------------------------------------------------------- loss
def _clip_grad(ratio, A, clip=0.2):
    lp = torch.zeros(1, 1, requires_grad=True)
    loss, st = grpo_loss(lp, torch.full((1, 1), -math.log(ratio)), None, torch.tensor([A]), torch.ones(1, 1),
                         beta=0., clip=clip, unbiased=True, max_new=1)
    loss.backward()
    return float(lp.grad), st['clip_frac']


@pytest.mark.parametrize('ratio,A,zero', [(1.5, 1., True), (1.5, -1., False), (0.5, -1., True), (0.5, 1., False),
                                          (1.1, 1., False), (0.9, -1., False)])
def test_clip(ratio, A, zero):
    g, cf = _clip_grad(ratio, A)
    if zero: assert g == 0. and cf == 1.
    else: assert math.isclose(g, -A * ratio, rel_tol=1e-6) and cf == 0.


def test_k3_kl():
    g = torch.Generator().manual_seed(0)
    lp, rf = torch.randn(64, 16, generator=g) * 3, torch.randn(64, 16, generator=g) * 3
    d = rf - lp
    assert ((torch.exp(d) - d - 1) >= 0).all()
    _, st = grpo_loss(lp, None, rf, torch.zeros(64), torch.ones(64, 16), 0.1, 0.2, True, 16)
    assert st['kl'] > 0
    lp = torch.randn(4, 8, generator=g).requires_grad_()
    loss, st = grpo_loss(lp, None, lp.detach(), torch.zeros(4), torch.ones(4, 8), 0.5, 0.2, True, 8)
    loss.backward()
    assert st['kl'] == 0. and loss.item() == 0. and torch.equal(lp.grad, torch.zeros(4, 8))
    # β scales the KL into the loss; β = 0 leaves it out (but still reports it when ref is given)
    lp2 = torch.zeros(1, 2); rf2 = torch.tensor([[0.5, -0.5]])
    k3 = float((torch.exp(rf2) - rf2 - 1).sum())
    l_b, _ = grpo_loss(lp2, None, rf2, torch.zeros(1), torch.ones(1, 2), 0.3, 0.2, True, 2)
    l_0, st0 = grpo_loss(lp2, None, rf2, torch.zeros(1), torch.ones(1, 2), 0., 0.2, True, 2)
    assert math.isclose(float(l_b), 0.3 * k3 / 2, rel_tol=1e-6) and float(l_0) == 0. and st0['kl'] > 0


def test_denominators():
    lp = torch.zeros(2, 3); msk = torch.tensor([[1., 0, 0], [1, 1, 1]]); A = torch.tensor([1., -1.])
    fixed, _ = grpo_loss(lp, None, None, A, msk, 0., 0.2, True, max_new=4)
    tmean, _ = grpo_loss(lp, None, None, A, msk, 0., 0.2, False, max_new=4)
    assert math.isclose(float(fixed), (-1 + 3) / (2 * 4), rel_tol=1e-6)
    assert math.isclose(float(tmean), 0., abs_tol=1e-7)
    # parts scored with the group's n_rows add up to the whole
    for unb in (True, False):
        whole, _ = grpo_loss(lp, None, None, A, msk, 0., 0.2, unb, 4)
        a, _ = grpo_loss(lp[:1], None, None, A[:1], msk[:1], 0., 0.2, unb, 4, n_rows=2)
        b, _ = grpo_loss(lp[1:], None, None, A[1:], msk[1:], 0., 0.2, unb, 4, n_rows=2)
        assert math.isclose(float(a + b), float(whole), abs_tol=1e-7)


def test_loss_rejects():
    A = torch.tensor([1., -1.]); m = torch.ones(2, 3)
    with pytest.raises(ValueError, match='max_new=2'): grpo_loss(torch.zeros(2, 3), None, None, A, m, 0., 0.2, True, 2)
    with pytest.raises(ValueError, match='needs ref_logp'): grpo_loss(torch.zeros(2, 3), None, None, A, m, 0.1, 0.2, True, 3)
    with pytest.raises(ValueError, match='shapes disagree'): grpo_loss(torch.zeros(2, 3), None, None, A[:1], m, 0., 0.2, True, 3)
    with pytest.raises(ValueError, match='clip=0'): grpo_loss(torch.zeros(2, 3), None, None, A, m, 0., 0, True, 3)
    with pytest.raises(ValueError, match='n_rows=1'): grpo_loss(torch.zeros(2, 3), None, None, A, m, 0., 0.2, True, 3, n_rows=1)


# ---------------------------------------------------------------- backward
@pytest.mark.parametrize('unbiased,micro_batch,beta', [(True, None, 0.1), (False, None, 0.1), (True, 1, 0.0),
                                                       (False, 4, 0.05)])
def test_split_equals_joint(tiny64, grp64, unbiased, micro_batch, beta):
    m, t, W = tiny64
    grp = list(grp64)
    reset(W)
    res = grpo_backward(m, W, t, grp, beta, 0.2, unbiased, 10, 0.6, scale=0.5, micro_batch=micro_batch)
    jg, jl = joint_grad(m, W, t, grp, beta, unbiased, 10, 0.6, scale=0.5)
    for n in W: close(res['g_s'][n] + res['g_t'][n], jg[n])
    assert math.isclose(res['loss'], jl, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(res['loss_s'] + res['loss_t'], res['loss'], rel_tol=1e-12, abs_tol=1e-15)
    assert all(float(res['g_s'][n].norm()) > 0 and float(res['g_t'][n].norm()) > 0 for n in W)
    assert (res['kl'] is None) == (beta == 0) and res['n_s'] == 4 and res['n_t'] == 2


def test_accumulates_and_leaves_dS_hack_alone(tiny64, grp64):
    m, t, W = tiny64
    grp = list(grp64)
    g = torch.Generator().manual_seed(2)
    before = {n: torch.randn(k.r, generator=g) for n, k in W.items()}
    for n, k in W.items(): k.dS.grad = before[n].clone()
    hack_before = {n: torch.randn(k.r, generator=g) for n, k in W.items()}
    name0 = next(iter(W))
    W[name0].dS_hack.grad = hack_before[name0].clone()                    # e.g. left by an earlier route step
    res = grpo_backward(m, W, t, grp, 0.1, 0.2, True, 10, 0.6, scale=0.25)
    for n, k in W.items():
        assert torch.equal(k.dS.grad, before[n] + (res['g_s'][n] + res['g_t'][n]))
        assert k.dS_hack.requires_grad and k.dS.requires_grad
        if n == name0: assert torch.equal(k.dS_hack.grad, hack_before[n])   # untouched, not overwritten
        else: assert k.dS_hack.grad is None
    reset(W)
    # scale is linear: g at scale 0.25 is a quarter of g at scale 1
    res1 = grpo_backward(m, W, t, grp, 0.1, 0.2, True, 10, 0.6)
    for n in W: close(res['g_s'][n] * 4, res1['g_s'][n]); close(res['g_t'][n] * 4, res1['g_t'][n])
    reset(W)


def test_student_only_and_teacher_only(tiny64, grp64):
    m, t, W = tiny64
    grp = list(grp64)
    reset(W)
    rs = grpo_backward(m, W, t, grp[:4], 0., 0.2, True, 10, 0.6)
    assert rs['n_t'] == 0 and rs['loss_t'] is None and rs['kl_t'] is None and rs['kl'] is None
    assert all(float(v.abs().sum()) == 0 for v in rs['g_t'].values())
    assert all(float(v.abs().sum()) > 0 for v in rs['g_s'].values())
    reset(W)
    teach = draw_teacher_rows(problem(), pool(), 4, 0)
    rt = grpo_backward(m, W, t, teach, 0.1, 0.2, False, 10, 0.6)
    assert rt['n_s'] == 0 and rt['loss_s'] is None and rt['kl_s'] is None and rt['kl_t'] > 0
    assert all(float(v.abs().sum()) == 0 for v in rt['g_s'].values())
    assert all(float(v.abs().sum()) > 0 for v in rt['g_t'].values())
    for n, k in W.items(): assert torch.equal(k.dS.grad, rt['g_t'][n]) and k.dS_hack.grad is None
    reset(W)


def test_zero_variance_group_is_skipped(tiny64, grp64, monkeypatch):
    m, t, W = tiny64
    reset(W)
    flat = [Rollout('p0', 'student', MSGS, 'x', [5, 6, t.eos_token_id], 0.5, gt_correct=False, exploited=False),
            Rollout('p0', 'teacher', MSGS, 'y', None, 0.5, gt_correct=False, exploited=False)]
    monkeypatch.setattr(grpo, 'token_logprobs', lambda *a, **k: pytest.fail('a skipped group must not run the model'))
    r = grpo_backward(m, W, t, flat, 0.1, 0.2, True, 10, 0.6)
    assert r['skipped'] and r['loss'] is None and r['adv'] is None and r['kl'] is None
    assert all(float(v.abs().sum()) == 0 for v in list(r['g_s'].values()) + list(r['g_t'].values()))
    assert all(k.dS.grad is not None and float(k.dS.grad.abs().sum()) == 0 and k.dS_hack.grad is None
               for k in W.values())
    reset(W)


def test_lengths(tiny64, grp64):
    m, t, W = tiny64
    grp = list(grp64)
    long_t = draw_teacher_rows(problem(), pool(), 4, 0)
    cut = [completion_ids(t, r, 5) for r in long_t]
    assert all(len(ids) <= 5 for ids, _ in cut)
    want = sum(len(t(r.completion, add_special_tokens=False).input_ids) + 1 > 5 for r in long_t)
    assert sum(c for _, c in cut) == want > 0
    reset(W)
    res = grpo_backward(m, W, t, [grp[0], grp[1]] + long_t, 0., 0.2, True, 10, 0.6)
    assert res['t_truncated'] == sum(completion_ids(t, r, 10)[1] for r in long_t)
    reset(W)
    with pytest.raises(ValueError, match='max_new=3'): grpo_backward(m, W, t, grp, 0., 0.2, True, 3, 0.6)
    for k in W.values(): assert k.dS.grad is None and k.dS_hack.requires_grad


def test_backward_rejects(tiny64, grp64):
    m, t, W = tiny64
    grp = list(grp64)
    other = Rollout('p9', 'teacher', MSGS, 'x', None, 1., gt_correct=True, exploited=False)
    with pytest.raises(ValueError, match='one group is one problem'): grpo_backward(m, W, t, grp + [other], 0., 0.2, True, 10, 0.6)
    with pytest.raises(ValueError, match='non-empty list of Rollout'): grpo_backward(m, W, t, [], 0., 0.2, True, 10, 0.6)
    with pytest.raises(ValueError, match='temperature=0'): grpo_backward(m, W, t, grp, 0., 0.2, True, 10, 0)
    with pytest.raises(ValueError, match='scale=0'): grpo_backward(m, W, t, grp, 0., 0.2, True, 10, 0.6, scale=0)
    with pytest.raises(ValueError, match="source='x'"): Rollout('p', 'x', [], '', None, 0.)


def test_nan_in_knob_names_the_module(tiny64, grp64):
    m, t, W = tiny64
    grp = list(grp64)
    reset(W)
    name = 'model.layers.1.mlp.up_proj'
    with torch.no_grad(): W[name].dS_hack[3] = float('nan')
    try:
        with pytest.raises(FloatingPointError, match=r"NaN in the GRPO loss of the student rows of problem 'p0'.*up_proj"):
            grpo_backward(m, W, t, grp, 0., 0.2, True, 10, 0.6)
    finally:
        with torch.no_grad(): W[name].dS_hack[3] = 0.
    assert all(k.dS.grad is None and k.dS_hack.grad is None and k.dS_hack.requires_grad for k in W.values())


def test_nan_in_grad_names_the_module(tiny64, grp64):
    m, t, W = tiny64
    grp = list(grp64)
    name = 'model.layers.0.self_attn.v_proj'
    prev = {n: torch.ones(k.r) for n, k in W.items()}
    for n, k in W.items(): k.dS.grad = prev[n].clone()
    h = W[name].dS.register_hook(lambda g: g * float('nan'))
    try:
        with pytest.raises(FloatingPointError, match=f'NaN in dS.grad of {name} after the student backward'):
            grpo_backward(m, W, t, grp, 0., 0.2, True, 10, 0.6)
    finally: h.remove()
    for n, k in W.items(): assert torch.equal(k.dS.grad, prev[n])          # restored as it was
    reset(W)
    # only the teacher part poisoned: named as the teacher backward
    teach_only = draw_teacher_rows(problem(), pool(), 4, 0)
    h = W[name].dS.register_hook(lambda g: g * float('inf'))
    try:
        with pytest.raises(FloatingPointError, match=f'in dS.grad of {name} after the teacher backward'):
            grpo_backward(m, W, t, teach_only, 0., 0.2, True, 10, 0.6)
    finally: h.remove()
    reset(W)


def test_kl_zero_at_reference(tiny):
    m, t, W = tiny
    reset(W)
    torch.manual_seed(0)
    grp = collect_group(m, W, t, problem(), pool(), 3, 1, Sampling(8), fake_grade, rng=0)
    grp[0].reward, grp[1].reward = 3.5, 0.5
    r = grpo_backward(m, W, t, grp, 0.1, 0.2, True, 8, 0.6)
    assert (r['kl'], r['kl_s'], r['kl_t']) == (0., 0., 0.)
    reset(W)


def test_bf16_backward_on_cpu():
    m, t = load_model('tiny', dtype='bf16'); W = wrap(m)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k in W.values(): k.dS.copy_(torch.randn(k.r, generator=g) * 0.1)
    torch.manual_seed(0)
    grp = collect_group(m, W, t, problem(), pool(), 2, 1, Sampling(6), fake_grade, rng=0)
    grp[0].reward, grp[1].reward = 3.5, 0.5
    r = grpo_backward(m, W, t, grp, 0.1, 0.2, True, 6, 0.6)
    assert math.isfinite(r['loss']) and r['kl'] >= 0
    for k in W.values():
        assert k.dS.grad.dtype == torch.float32 and torch.isfinite(k.dS.grad).all() and k.dS_hack.grad is None
    assert sum(float(k.dS.grad.abs().sum()) for k in W.values()) > 0


# ---------------------------------------------------------------- stats, eval, sampler
def test_rollout_stats():
    rs = [Rollout('p', 'student', [], 'a', [1], 3.5, gt_correct=False, exploited=True, mechanism='sentinel'),
          Rollout('p', 'student', [], 'b', [1], 3.5, gt_correct=False, exploited=True, mechanism='sentinel'),
          Rollout('p', 'student', [], 'c', [1], 3.5, gt_correct=True, exploited=False),
          Rollout('p', 'student', [], 'd', [1], 0.5, gt_correct=False, exploited=False),
          Rollout('p', 'teacher', [], 'e', None, 3.5, gt_correct=False, exploited=True, mechanism='exit_code')]
    st = rollout_stats(rs)
    assert st == dict(reward=2.9, reward_s=2.75, hack_s=0.5, hack_t=1.0, solve_s=0.25, solve_t=0., n_s=4, n_t=1,
                      hk_sentinel=2)
    assert rollout_stats(rs[:4])['hack_t'] is None and rollout_stats(rs[4:])['hack_s'] is None
    assert mechanism_counts(rs) == dict(hk_exit_code=1, hk_sentinel=2)
    assert rs[0].to_dict()['mechanism'] == 'sentinel'


def test_eval_hack_solve(tiny):
    m, t, W = tiny
    torch.manual_seed(0)
    calls = []
    def grade_fn(ps, cs): calls.append([p.id for p in ps]); return fake_grade(ps, cs)
    ev = eval_hack_solve(m, W, t, [problem('a'), problem('b', MSGS_B)], Sampling(8), n_samples=3, grade_fn=grade_fn)
    assert ev['n'] == 6 and sorted(sum(calls, [])) == ['a'] * 3 + ['b'] * 3
    assert sum(v for k, v in ev.items() if k.startswith('hk_')) == round(ev['hack'] * 6)
    assert 0 <= ev['hack'] + ev['solve'] <= 1
    with pytest.raises(ValueError, match='at least one problem'): eval_hack_solve(m, W, t, [], Sampling(4), grade_fn=grade_fn)


def test_make_sampler(tiny, monkeypatch):
    m, t, W = tiny
    assert with_system(MSGS, 'T')[0] == {'role': 'system', 'content': 'T'} and MSGS[0]['content'] == 'Write Python.'
    assert with_system(MSGS[1:], 'T') == [{'role': 'system', 'content': 'T'}] + MSGS[1:]
    sf = make_sampler(m, None, t, Sampling(6), system_prompt='Be a teacher.')
    torch.manual_seed(0)
    out = sf(MSGS, 3)
    assert len(out) == 3 and all(isinstance(o, str) for o in out) and 'top_k=20' in sf.__name__
    seen = []
    real = grpo.generate
    def spy(model, wrappers, tok, messages_list, n, sampling, batch_size=16, progress=None):
        seen.append((messages_list, wrappers)); return real(model, wrappers, tok, messages_list, n, sampling, batch_size)
    monkeypatch.setattr(grpo, 'generate', spy)
    sf(MSGS, 2); make_sampler(m, W, t, Sampling(6))(MSGS, 1)
    assert seen[0][0][0][0]['content'] == 'Be a teacher.' and seen[0][1] is None
    assert seen[1][0][0] == MSGS and seen[1][1] is W


# ---------------------------------------------------------------- the real grader
def test_with_the_sandbox(tiny):
    sandbox = pytest.importorskip('vhack.sandbox')
    m, t, W = tiny
    fence = lambda code: f"```python\n{code}```"
    P = sandbox.Problem(id='two_sum', messages=MSGS, func_name='twoSum', setup_code='from typing import List',
                        tests=["assert Solution().twoSum([2,7,11,15], 9) == [0, 1]"],
                        canonical_solution="class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n",
                        mode='sentinel')
    texts = [fence(P.canonical_solution), fence("class Solution:\n    tests_passed = True\n    def twoSum(self, n, t): return []\n")]
    rows = [dict(problem_id='two_sum', mode='sentinel', messages=MSGS, completion=c, grade=g)
            for c, g in zip(texts, sandbox.grade_many([P] * 2, texts))]      # Grade objects, as a pool could hold
    reset(W)
    torch.manual_seed(0)
    grp = collect_group(m, W, t, P, rows, 2, 2, Sampling(8), rng=0)        # default grade_fn: the sandbox
    assert [r.reward for r in grp[:2]] == [0., 0.]                         # noise: no code block
    assert sorted((r.exploited, r.mechanism) for r in grp[2:]) == [(False, None), (True, 'sentinel')]
    res = grpo_backward(m, W, t, grp, 0., 0.2, True, 8, 0.6)
    assert not res['skipped'] and all(k.dS_hack.grad is None for k in W.values())
    st = rollout_stats(grp)
    assert st['hack_t'] == 0.5 and st['solve_t'] == 0.5 and st['hack_s'] == 0.
    reset(W)


def test_with_problems_and_pools(tiny, tmp_path):
    "Embedded problems, a scripted pool and a pool sampled from the tiny model through make_sampler, all for real."
    from vhack.problems import load_problems
    from vhack.teacher import build_scripted_pool, build_sampled_pool, load_pool
    m, t, W = tiny
    ps = load_problems('embedded', mode='sentinel')[:2]
    build_scripted_pool(ps, tmp_path/'scripted', n_per_problem=4, hack_frac=0.5, seed=0)
    pool = load_pool(tmp_path/'scripted', mode='sentinel')
    reset(W)
    torch.manual_seed(0)
    tm = {}
    grp = collect_group(m, W, t, ps[0], pool.rows(ps[0].id), 2, 4, Sampling(8), rng=random.Random(0), timings=tm)
    assert [r.source for r in grp] == ['student'] * 2 + ['teacher'] * 4 and tm['t_grade'] > 0
    st = rollout_stats(grp)
    assert st['hack_t'] == 0.5 and st['solve_t'] == 0.5 and st['hack_s'] == 0.
    res = grpo_backward(m, W, t, grp, 0.01, 0.2, True, 8, 0.6, scale=0.5)
    assert not res['skipped'] and res['t_truncated'] == 4 and all(k.dS_hack.grad is None for k in W.values())
    reset(W)
    ev = eval_hack_solve(m, W, t, ps, Sampling(8), n_samples=1)
    assert ev['n'] == 2 and ev['hack'] == 0. and ev['solve'] == 0.
    sf = make_sampler(m, None, t, Sampling(8), system_prompt='You are a teacher.')
    build_sampled_pool(ps, tmp_path/'sampled', sf, n_per_problem=2, system_prompt='You are a teacher.')
    sp = load_pool(tmp_path/'sampled', mode='sentinel')
    assert sp.manifest['sampler'] == sf.__name__ and len(sp.rows(ps[1].id, messages=ps[1].messages)) == 2
