"""GRPO backward speed: `token_logprobs` forward + backward on one group (one prompt, G completions) with the
prompt shared (run once, its cache broadcast over the rows) vs the full batch (the prompt run G times).

Usage: python benchmarks/logprob_speed.py [--model smollm2] [--group 8] [--new 128] [--reps 3]"""
import argparse, statistics, time
import torch
from vhack.models import load_model, render_prompt, encode
from vhack.adapter import wrap, token_logprobs
from vhack.problems import load_problems

ap = argparse.ArgumentParser()
ap.add_argument('--model', default='smollm2'); ap.add_argument('--group', type=int, default=8)
ap.add_argument('--new', type=int, default=128); ap.add_argument('--reps', type=int, default=3)
a = ap.parse_args()
model, tok = load_model(a.model)
W = wrap(model)
prob = load_problems('embedded', mode='run_tests_aware')[0]
prompt = render_prompt(tok, prob.messages)
g = torch.Generator().manual_seed(0)
comps = [torch.randint(0, len(tok), (a.new - 9 * i,), generator=g).tolist() for i in range(a.group)]
batch = encode(tok, [prompt] * a.group, comps)
P = batch['input_ids'].shape[1] - batch['completion_mask'].shape[1]
print(f"{a.model}: one prompt of {P} tokens, {a.group} completions of {int(batch['completion_mask'].sum())} tokens in all, "
      f"torch threads {torch.get_num_threads()}")
times = {True: [], False: []}
for rep in range(a.reps):
    for share in (True, False):                                    # interleaved, so load changes hit both
        for k in W.values(): k.dS.grad = None
        t = time.perf_counter()
        token_logprobs(model, batch, 0.6, share_prompt=share).sum().backward()
        times[share].append(time.perf_counter() - t)
        if share: gs = torch.cat([k.dS.grad.clone() for k in W.values()])
        else: gf = torch.cat([k.dS.grad.clone() for k in W.values()])
    rel = float((gs - gf).norm() / gf.norm())
for share in (True, False):
    print(f"  {'shared prompt' if share else 'full batch   '}: {statistics.median(times[share]):6.2f} s "
          f"(median of {a.reps}: {', '.join(f'{x:.2f}' for x in times[share])})")
print(f"  speed-up {statistics.median(times[False]) / statistics.median(times[True]):.2f}x; "
      f"relative gradient difference {rel:.1e}")
