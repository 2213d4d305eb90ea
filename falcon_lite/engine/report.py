"""report.md and the plots of a stress matrix, from its results rows and series."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

OUTCOMES = ("calibrated", "exploded", "miscalibrated", "diverged")
PLOTS = {"std_ratio": "std_ratio.png", "abs_bias_over_sigma": "bias_over_sigma.png", "alarm_ema": "alarm.png"}


def point_label(overrides: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "(base)"


def group(results: list[dict], series: list[dict]) -> dict[str, list[tuple[dict, dict]]]:
    groups: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    for row, s in zip(results, series):
        groups[point_label(row["overrides"])].append((row, s))
    return groups


def _median(values) -> str:
    values = [v for v in values if v is not None]
    return f"{np.median(values):.4g}" if values else "-"


def _alarm_lead(row: dict) -> int | None:
    """Steps between the alarm and the explosion (positive: the alarm came first)."""
    if row.get("alarm_step") is None or row.get("explosion_step") is None:
        return None
    return row["explosion_step"] - row["alarm_step"]


def table(results: list[dict], series: list[dict]) -> str:
    """One row per grid point, aggregated over its seeds."""
    head = ["grid point", "seeds", *OUTCOMES, "median final std_ratio", "median final abs bias/sigma",
            "median converged step", "median explosion step", "alarm fired", "alarm before explosion",
            "median alarm lead (steps)", "final coverage 68%", "prior samples drawn", "median rollbacks", "mean wall s"]
    sampled = [k for k in ("c2st", "tarp_error") if any(r.get(f"final_{k}") is not None for r in results)]
    head += [f"median final {k}" for k in sampled]  # only where runs measured them (training.c2st_every, ...)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, members in group(results, series).items():
        rows = [r for r, _ in members]
        counts = [str(sum(r["outcome"] == o for r in rows)) for o in OUTCOMES]
        cells = [
            label, str(len(rows)), *counts,
            _median(r["final_std_ratio"] for r in rows),
            _median(r["final_abs_bias_over_sigma"] for r in rows),
            _median(r["converged_step"] for r in rows),
            _median(r["explosion_step"] for r in rows),
            str(sum(r.get("alarm_step") is not None for r in rows)),
            str(sum(_alarm_lead(r) is not None and _alarm_lead(r) > 0 for r in rows)),
            _median(_alarm_lead(r) for r in rows),
            _median(r.get("final_coverage_68") for r in rows),
            _median(r.get("prior_sample_share") for r in rows),
            _median(r.get("rollbacks", 0) for r in rows),
            f"{np.mean([r['wall_seconds'] for r in rows]):.1f}",
            *[_median(r.get(f"final_{k}") for r in rows) for k in sampled],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(out_dir: Path, results: list[dict], series: list[dict]) -> list[str]:
    """One PNG per series, a panel per grid point, a line per seed, log-scale y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group(results, series)
    written = []
    for name, filename in PLOTS.items():
        n = len(groups)
        cols = min(n, 3)
        rows = -(-n // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False, sharey=True)
        for ax, (label, members) in zip(axes.flat, groups.items()):
            for row, s in members:
                y = np.array([np.nan if v is None else abs(v) for v in s[name]], dtype=float)
                ax.plot(s["step"], y, lw=0.8, label=f"seed {row['seed']} ({row['outcome']})")
            ax.set_yscale("log")
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("step")
            ax.axhline(1.0, color="k", lw=0.5, ls="--")
            ax.legend(fontsize=6)
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        axes[0][0].set_ylabel({"abs_bias_over_sigma": "|bias| / sigma", "alarm_ema": "alarm (smoothed z)"}.get(name, name))
        fig.tight_layout()
        fig.savefig(out_dir / filename, dpi=90)
        plt.close(fig)
        written.append(filename)
    return written


def write_report(out_dir: Path, results: list[dict], series: list[dict], grid: dict) -> None:
    plots = plot(out_dir, results, series)
    text = [
        "# Stress report",
        "",
        f"Grid: `{json.dumps(grid)}`; {len(results)} runs.",
        "",
        "Outcomes (stress contract): calibrated = final std_ratio in [0.8, 1.25], |bias| < sigma, never "
        "exploded; exploded = reached 0.9 < std_ratio < 1.1, later std_ratio > 10; miscalibrated = neither; "
        "diverged = non-finite.",
        "",
        table(results, series),
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(text))
