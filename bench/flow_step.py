"""One optimizer step of sbi's default NSF size: zuko's (falcon-lite's flow) against sbi's.

Conditional NSF on 2-D theta and 2-D x (two_moons' sizes), 5 transforms, 50 hidden, 10 bins,
float32, one thread, Adam; CPU milliseconds per step (mean of `--steps` after 5 warm-up steps),
both in this process. Needs the `bench` extra (sbi) for sbi's side.

    .venv/bin/python bench/flow_step.py [--rows 128] [--steps 50]
"""

from __future__ import annotations

import argparse
import time

import torch
import zuko


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    theta, x = torch.randn(args.rows, 2), torch.randn(args.rows, 2)
    flow = zuko.flows.NSF(2, 2, transforms=5, hidden_features=[50, 50], bins=10, activation=torch.nn.ReLU)
    zuko_ms = ms_per_step(lambda: flow(x).log_prob(theta), flow, args.steps)
    print(f"zuko NSF: {zuko_ms:.2f} ms/step")
    from sbi.neural_nets import posterior_nn

    net = posterior_nn("nsf", hidden_features=50, num_transforms=5, num_bins=10)(torch.rand(200, 2), torch.randn(200, 2))
    sbi_ms = ms_per_step(lambda: net.log_prob(theta, x), net, args.steps)
    print(f"sbi NSF: {sbi_ms:.2f} ms/step (zuko / sbi: {zuko_ms / sbi_ms:.2f})")


if __name__ == "__main__":
    main()
