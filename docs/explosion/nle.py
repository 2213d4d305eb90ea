"""The seed's NLE experiment on our buffer: neural likelihood estimation, 100% proposal sampling.

For each seed: the default scenario with `estimator.name = "gaussian_nle"` and
`buffer.prior_fraction = 0` (after the prior-only warm-up every simulation comes from the
proposal), run with the inline runtime; then the learned likelihood mean g at z = 0 and
z = 1 (the identity is g(z) = z) and the final std_ratio of the Laplace posterior.
Writes `report.md` and `results.json` into --out.

    .venv/bin/python docs/explosion/nle.py --seeds 3 --steps 10000 --out docs/explosion/nle
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from falcon_lite.config import RunConfig, with_overrides
from falcon_lite.engine.inline import load_state, run_inline, scratch_run
from falcon_lite.store import runs
from falcon_lite.store.db import session_factory


def one(seed: int, steps: int) -> dict:
    config = with_overrides(RunConfig(), {"estimator.name": "gaussian_nle", "buffer.prior_fraction": 0.0,
                                          "training.seed": seed, "training.steps": steps})
    with scratch_run(config, prefix="flr-nle-") as (engine, run_id):
        try:
            state = run_inline(engine, run_id)
            error = None
        except Exception as exc:  # noqa: BLE001 - a diverged run is a result here
            state, error = None, f"{type(exc).__name__}: {exc}"
        with session_factory(engine).begin() as s:
            last = runs.metrics_since(s, run_id, since_step=steps - 2, limit=None)
        if state is None:
            state = load_state(engine, run_id)
    with torch.no_grad():
        g = state.estimator.head.mean(torch.tensor([[0.0], [1.0]], dtype=state.estimator.head.dtype))[:, 0]
    row = last[-1] if last else {}
    return {"seed": seed, "mu(0)": float(g[0]), "mu(1)": float(g[1]), "final_std_ratio": row.get("std_ratio"),
            "final_abs_bias_over_sigma": row.get("abs_bias_over_sigma"), "error": error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--out", default="docs/explosion/nle")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [one(seed, args.steps) for seed in range(args.seeds)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = ["| seed | mu(0) | mu(1) | final std_ratio | final abs bias/sigma | note |", "|---|---|---|---|---|---|"]
    for r in results:
        fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
        lines.append(f"| {r['seed']} | {fmt(r['mu(0)'])} | {fmt(r['mu(1)'])} | {fmt(r['final_std_ratio'])} | "
                     f"{fmt(r['final_abs_bias_over_sigma'])} | {r['error'] or ''} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
