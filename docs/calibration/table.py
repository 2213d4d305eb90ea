"""Fill docs/calibration.md's preset table from the stress results (between the rows markers).

    .venv/bin/python docs/calibration/table.py
"""

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
PROBLEMS = [("gaussian1d", "gaussian 1-D"), ("gaussian3d", "gaussian 3-D"), ("exp3d", "exp_noise 3-D")]


def rows() -> list[str]:
    out = []
    for name, label in PROBLEMS:
        for steps in ("10k", "20k"):
            path = ROOT / f"{name}-{steps}" / "results.json"
            if not path.exists():
                out.append(f"| {label} | {steps} | not run | | | |")
                continue
            runs = json.loads(path.read_text())["runs"]

            def median(key):
                values = [r[key] for r in runs if r.get(key) is not None]
                return f"{np.median(values):.4g}" if values else "-"

            calibrated = sum(r["outcome"] == "calibrated" for r in runs)
            out.append(f"| {label} | {runs[0]['steps']} | {calibrated} | {median('final_std_ratio')} | "
                       f"{median('final_abs_bias_over_sigma')} | {median('final_coverage_68')} |")
    return out


def main() -> None:
    doc = ROOT.parent / "calibration.md"
    text = doc.read_text()
    head, rest = text.split("<!-- rows -->\n", 1)
    _, tail = rest.split("<!-- /rows -->", 1)
    doc.write_text(head + "<!-- rows -->\n" + "\n".join(rows()) + "\n<!-- /rows -->" + tail)


if __name__ == "__main__":
    main()
