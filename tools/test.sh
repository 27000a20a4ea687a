#!/usr/bin/env bash
# vhack's test command (the README's second command; CI calls it too).
# 1 notebooks clean · 2 library in sync · 3 nbdev_test · 4 pytest · 5 the smoke run through papermill.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg OMP_NUM_THREADS=1  # one thread per process: tests run side by side on 2 cores
step() { printf '\n== %s\n' "$*"; }
dirty() { git status --porcelain -- "$@"; }

step "1/5 notebooks are clean (nbdev_clean leaves no diff)"
before=$(dirty nbs)
nbdev_clean
if [ "$(dirty nbs)" != "$before" ]; then git status --short -- nbs; echo "FAIL: run nbdev_clean and commit"; exit 1; fi

step "2/5 library in sync with notebooks (nbdev_export leaves no diff)"
before=$(dirty vhack)
nbdev_export
if [ "$(dirty vhack)" != "$before" ]; then git status --short -- vhack; git diff --stat -- vhack; echo "FAIL: run nbdev_export and commit"; exit 1; fi

python tools/make_readme.py --check

step "3/5 nbdev_test (every notebook top to bottom; slow cells skipped)"
nbdev_test --n_workers 2 --timing

step "4/5 pytest"
python -m pytest -q tests

step "5/5 smoke training run through papermill"
out=$(mktemp -d)
papermill -k python3 --log-output nbs/06_train_loop.ipynb "$out/train.ipynb" -p preset smoke -p run_dir "$out/run" >"$out/papermill.log" 2>&1 \
  || { tail -50 "$out/papermill.log"; echo "FAIL: smoke run"; exit 1; }
python -m vhack.train check "$out/run" --steps 30
