"""One optimizer step and one region's draws of sbi's default NSF size: falcon-lite's flow
against zuko's own NSF and sbi's.

Conditional NSF on `--dim`-D theta and x (2: two_moons' sizes; 10: gaussian_linear's), 5
transforms, 2 x 50 hidden, 10 bins, float32, one thread, Adam; CPU milliseconds per step on
`--rows` rows (mean of `--steps` after 5 warm-up steps) and per `--draws` draws at one x (a
truncated proposal's region), all in this process. falcon-lite's flow is zuko's NSF with its
splines' knots built by `flow.Spline` (exp / sum instead of torch's softmax); the ratio
falcon-lite / zuko is that change alone. Needs the `bench` extra (sbi) for sbi's side.

    .venv/bin/python bench/flow_step.py [--dim 2] [--rows 128] [--steps 50] [--draws 10000] [--passes 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import zuko

from falcon_lite.core.estimators.flow import build_flow


def ms_per_step(log_prob, module: torch.nn.Module, steps: int) -> float:
    opt = torch.optim.Adam(module.parameters(), 1e-3)

    def step() -> None:
        loss = -log_prob().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    start = time.process_time()
    for _ in range(steps):
        step()
    return (time.process_time() - start) / steps * 1e3


def ms_per_draws(flow: torch.nn.Module, x: torch.Tensor, draws: int, repeats: int = 5) -> float:
    with torch.no_grad():
        flow(x).sample((draws,))
        start = time.process_time()
        for _ in range(repeats):
            flow(x).sample((draws,))
    return (time.process_time() - start) / repeats * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--rows", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--draws", type=int, default=10_000)
    p.add_argument("--passes", type=int, default=None, help="2: coupling transforms (default: autoregressive)")
    p.add_argument("--no-sbi", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    d = args.dim
    theta, x, x_obs = torch.randn(args.rows, d), torch.randn(args.rows, d), torch.randn(1, d)
    passes = {} if args.passes is None else {"passes": args.passes}
    flows = {
        "zuko NSF": zuko.flows.NSF(d, d, transforms=5, hidden_features=[50, 50], bins=10, activation=torch.nn.ReLU,
                                   **passes),
        "falcon-lite NSF": build_flow("nsf", d, d, 5, [50, 50], "relu", 10, torch.float32,
                                      torch.Generator().manual_seed(0), args.passes),
    }
    times = {}
    for name, flow in flows.items():
        times[name] = ms_per_step(lambda f=flow: f(x).log_prob(theta), flow, args.steps), ms_per_draws(flow, x_obs, args.draws)
    base_step, base_draws = times["zuko NSF"]
    for name, (step, draws) in times.items():
        print(f"{name}: {step:.2f} ms/step ({step / base_step:.2f}), {args.draws} draws {draws:.0f} ms "
              f"({draws / base_draws:.2f})")
    if not args.no_sbi:
        from sbi.neural_nets import posterior_nn

        net = posterior_nn("nsf", hidden_features=50, num_transforms=5, num_bins=10)(torch.rand(200, d), torch.randn(200, d))
        sbi_ms = ms_per_step(lambda: net.log_prob(theta, x), net, args.steps)
        print(f"sbi NSF: {sbi_ms:.2f} ms/step (falcon-lite / sbi: {times['falcon-lite NSF'][0] / sbi_ms:.2f})")


if __name__ == "__main__":
    main()
