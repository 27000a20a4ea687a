"""Adapter speed on SmolLM2-135M (CPU): SVD time, and generation tokens/s at batch 8 × 128 new tokens for the plain
model, the hooked (wrapped) model, and `merged()`.  Usage: python benchmarks/adapter_speed.py [--new 128 --batch 8]"""
import argparse, time, torch
from vhack.models import load_model, render_prompt, encode
from vhack.adapter import wrap, merged, svd_cached, unwrap

ap = argparse.ArgumentParser(); ap.add_argument('--new', type=int, default=128); ap.add_argument('--batch', type=int, default=8)
ap.add_argument('--reps', type=int, default=2); a = ap.parse_args()
torch.manual_seed(0)
model, tok = load_model('smollm2')
msgs = [{'role': 'user', 'content': f'Write a Python function number {i} that adds two numbers.'} for i in range(a.batch)]
enc = encode(tok, [render_prompt(tok, [m]) for m in msgs])
kw = dict(input_ids=enc['input_ids'], attention_mask=enc['attention_mask'], max_new_tokens=a.new, min_new_tokens=a.new,
          do_sample=False, pad_token_id=tok.pad_token_id)

def tps(label):
    best = 0
    for _ in range(a.reps):
        t = time.time()
        with torch.no_grad(): out = model.generate(**kw)
        best = max(best, (out.shape[1] - enc['input_ids'].shape[1]) * a.batch / (time.time() - t))
    print(f"{label:>8}: {best:6.1f} tok/s"); return best

plain = tps('plain')
t = time.time()
lins = [m for n, m in model.named_modules() if n.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'))]
for m in lins: torch.linalg.svd(m.weight.float(), full_matrices=False)
print(f"SVD of {len(lins)} Linears (uncached, fp32): {time.time() - t:.1f} s")
t = time.time(); W = wrap(model, cache=True); print(f"wrap() with the SVD cache warm or cold: {time.time() - t:.1f} s")
with torch.no_grad():
    for k in W.values(): k.dS.normal_(0, 0.01)
hooked = tps('hooked')
with merged(W): m = tps('merged')
unwrap(model); plain2 = tps('plain')                      # again, last: the order of measurement is not the story
plain = max(plain, plain2)
print(f"merged / plain = {m / plain:.3f}   hooked / plain = {hooked / plain:.3f}")
