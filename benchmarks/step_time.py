"""Training speed: the smoke run through papermill (wall time, kernel start included), and the `smol` step
breakdown (t_gen, t_grade, t_bwd, t_step) from a short run's rows.

Usage: python benchmarks/step_time.py [--smol-steps 3] [--skip-smoke] [--skip-smol]"""
import argparse, json, statistics, subprocess, sys, tempfile, time
from pathlib import Path

root = Path(__file__).resolve().parent.parent
ap = argparse.ArgumentParser()
ap.add_argument('--smol-steps', type=int, default=3)
ap.add_argument('--skip-smoke', action='store_true'); ap.add_argument('--skip-smol', action='store_true')
a = ap.parse_args()

def rows(d): return [json.loads(l) for l in (Path(d)/'rows.jsonl').read_text().splitlines() if l.strip()]

with tempfile.TemporaryDirectory() as td:
    if not a.skip_smoke:
        t = time.time()
        subprocess.run(['papermill', '-k', 'python3', '--cwd', str(root), str(root/'nbs/06_train_loop.ipynb'),
                        f'{td}/smoke.ipynb', '-p', 'preset', 'smoke', '-p', 'run_dir', f'{td}/smoke'],
                       check=True, capture_output=True)
        r = rows(f'{td}/smoke')
        print(f"smoke through papermill: {time.time() - t:.1f} s wall for {len(r)} steps "
              f"(mean t_step {statistics.mean(x['t_step'] for x in r):.2f} s)")
    if not a.skip_smol:
        from vhack.config import make_config
        from vhack.train import main
        t = time.time()
        out = main(make_config('smol', steps=a.smol_steps, eval_ablate_every=10_000, run_dir=f'{td}/smol',
                               intervention='erase'), progress=True)
        r = out['rows'][1:] or out['rows']                 # the first step pays one-off warm-up
        print(f"smol: {a.smol_steps} steps in {time.time() - t:.1f} s wall (setup included); per step, mean of "
              f"steps ≥ 1:")
        for k in ('t_gen', 't_grade', 't_bwd', 't_step'):
            print(f"  {k:8s} {statistics.mean(x[k] for x in r):7.2f} s")
