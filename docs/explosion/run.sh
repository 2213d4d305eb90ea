#!/usr/bin/env bash
# Every table of docs/explosion.md, in order. Each line is the command printed above its table.
set -euo pipefail
cd "$(dirname "$0")/../.."
fl=.venv/bin/falcon-lite
W=${WORKERS:-2}
$fl stress --grid buffer.prior_fraction=0,0.2,0.5,0.8 --seeds 5 --steps 10000 --workers $W --out docs/explosion/prior-fraction
$fl stress --grid estimator.importance_weighting=true --seeds 3 --steps 10000 --workers $W --out docs/explosion/iw
.venv/bin/python docs/explosion/nle.py --seeds 2 --steps 10000 --out docs/explosion/nle
$fl stress --grid estimator.normalize=true --grid buffer.prior_fraction=0,0.2 --seeds 3 --steps 10000 --workers $W --out docs/explosion/normalize
$fl stress --base docs/explosion/rolling.json --grid buffer.prior_fraction=0,0.2 --seeds 3 --steps 10000 --workers $W --out docs/explosion/rolling
$fl stress --grid estimator.importance_weighting=true --grid proposal.temperature=10,20 --seeds 3 --steps 10000 --workers $W --out docs/explosion/gamma
$fl stress --grid training.lr_after_warmup=1e-4,1e-5 --seeds 5 --steps 10000 --workers $W --out docs/explosion/lr
# 9. the flow (issue 17 item 6): 2 seeds x 3000 steps (CPU was scarce)
$fl stress --base docs/explosion/flow-base.json --grid estimator.normalize=false,true --seeds 2 --steps 3000 --workers $W --out docs/explosion/flow-quota-0
$fl stress --base docs/explosion/flow-normalized.json --grid buffer.prior_fraction=0.2,adaptive --seeds 2 --steps 3000 --workers $W --out docs/explosion/flow-policies
