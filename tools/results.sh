#!/usr/bin/env bash
# Regenerate the first result (README "First result"): the smol sweep, its figures and tables, the README.
# SEEDS="0 1" bash tools/results.sh   runs more seeds (finished runs are skipped, partial ones resumed).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m vhack.sweep --preset smol --arms none erase route erase+random --seeds ${SEEDS:-0}
papermill -k python3 --cwd . nbs/07_dynamics_plots.ipynb runs/plots-smol.ipynb \
  -p demo False -p runs_glob "runs/smol-*" -p out_dir figures -p prefix smol_ -p smooth 5
jupyter nbconvert --to notebook --execute --inplace nbs/index.ipynb
nbdev_clean --fname nbs/index.ipynb
python tools/make_readme.py
