#!/usr/bin/env bash
# Every table of docs/calibration.md, in order. Each line is the command printed above its table.
set -euo pipefail
cd "$(dirname "$0")/../.."
fl=.venv/bin/falcon-lite
W=${WORKERS:-2}
$fl stress --grid estimator.residual=true --grid estimator.normalize=false,true --grid buffer.prior_fraction=0.2 --seeds 2 --steps 10000 --workers $W --out docs/calibration/residual
$fl stress --grid estimator.preset=calibrated --grid buffer.prior_fraction=0.2 --seeds 5 --steps 10000 --workers $W --out docs/calibration/gaussian1d-10k
$fl stress --base docs/calibration/gaussian3d.json --grid estimator.preset=calibrated --grid buffer.prior_fraction=0.2 --seeds 5 --steps 10000 --workers $W --out docs/calibration/gaussian3d-10k
$fl stress --base docs/calibration/exp3d.json --grid estimator.preset=calibrated --grid buffer.prior_fraction=0.2 --seeds 5 --steps 10000 --workers $W --out docs/calibration/exp3d-10k
$fl stress --grid estimator.preset=calibrated --grid buffer.prior_fraction=0.2 --seeds 5 --steps 20000 --workers $W --out docs/calibration/gaussian1d-20k
$fl stress --base docs/calibration/gaussian3d.json --grid estimator.preset=calibrated --grid buffer.prior_fraction=0.2 --seeds 5 --steps 20000 --workers $W --out docs/calibration/gaussian3d-20k
$fl stress --base docs/calibration/exp3d.json --grid estimator.preset=calibrated --grid buffer.prior_fraction=0.2 --seeds 5 --steps 20000 --workers $W --out docs/calibration/exp3d-20k
$fl stress --grid estimator.preset=calibrated --grid buffer.prior_fraction=0,0.05 --seeds 2 --steps 10000 --workers $W --out /tmp/cal0
$fl stress --grid buffer.prior_fraction=adaptive,0.2 --seeds 10 --steps 10000 --workers $W --out docs/calibration/adaptive
$fl stress --grid buffer.prior_fraction=adaptive --seeds 10 --steps 20000 --workers $W --out docs/calibration/adaptive-20k
$fl stress --base docs/calibration/exp3d.json --grid estimator.preset=calibrated --grid buffer.prior_fraction=adaptive,0 --seeds 3 --steps 10000 --workers $W --out docs/calibration/adaptive-exp3d
$fl stress --base docs/explosion/rolling.json --grid buffer.prior_fraction=adaptive --seeds 5 --steps 10000 --workers $W --out docs/calibration/adaptive-rolling
.venv/bin/python docs/calibration/table.py
