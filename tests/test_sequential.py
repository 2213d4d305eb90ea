"""Sequential correctness (issue 17 item 2): the truncated prior (core/truncation.py) draws
inside its region with the density it stores; the engine builds it from an estimator with a
density, the same way inline and in a sampler that loads the weights (the Ray path); a config
asks for it only with such an estimator; the sample-based checks land in metrics rows; and a
sequential flow run with a truncated proposal reaches the known posterior (C2ST <= 0.6)."""

import math

import numpy as np
import pytest
import torch

from falcon_lite.config import RunConfig, with_overrides
from falcon_lite.core.policy import Origin
from falcon_lite.core.problems import Normal, Parameter, ProductPrior, Uniform
from falcon_lite.core.truncation import TruncatedPrior, hpd_threshold
from falcon_lite.engine import loop, regions
from falcon_lite.engine.problem import ConfigError, check_config
from falcon_lite.engine.state import new_state

torch.set_num_threads(1)


def normal_log_pdf(theta, loc, scale):
    u = (theta[:, 0] - loc) / scale
    return -0.5 * u * u - math.log(scale) - 0.5 * math.log(2 * math.pi)


def test_truncated_prior_draws_inside_its_region_with_a_normalised_density():
    """Prior N(0, 1), region {|theta - 0.5| <= 0.2} (a Gaussian log q's level set): every draw is
    inside, the draws are the prior restricted there, Z is the prior's mass of the interval, and
    exp(log_prob) integrates to one."""
    prior = ProductPrior([Parameter("a", Normal(0.0, 1.0))])

    def log_q(theta):
        return normal_log_pdf(np.asarray(theta), 0.5, 0.1)

    threshold = float(normal_log_pdf(np.array([[0.7]]), 0.5, 0.1)[0])  # the level at 2 sigma
    region = TruncatedPrior(prior, log_q, threshold)
    theta = region.sample(20_000, np.random.default_rng(0))
    assert theta.shape == (20_000, 1) and not region.fell_back
    assert np.all(np.abs(theta - 0.5) <= 0.2 + 1e-12)
    mass = 0.5 * (math.erf(0.7 / math.sqrt(2)) - math.erf(0.3 / math.sqrt(2)))
    assert abs(math.exp(region.log_mass) - mass) < 0.05 * mass
    # the prior restricted: more mass near 0.3 than near 0.7, in the prior's ratio
    near_low, near_high = np.mean(theta < 0.35), np.mean(theta > 0.65)
    ratio = math.exp(-0.5 * 0.325**2) / math.exp(-0.5 * 0.675**2)
    assert abs(near_low / near_high - ratio) < 0.15 * ratio
    grid = np.linspace(-3, 3, 60_001)[:, None]
    density = np.exp(region.log_prob(grid))
    assert np.all(density[np.abs(grid[:, 0] - 0.5) > 0.2] == 0)
    assert abs(np.sum(density) * (grid[1, 0] - grid[0, 0]) - 1.0) < 0.05


def test_truncated_prior_is_deterministic_and_falls_back_to_the_prior():
    prior = ProductPrior([Parameter("a", Uniform(-1.0, 1.0)), Parameter("b", Uniform(-1.0, 1.0))])

    def log_q(theta):
        return -np.sum(np.asarray(theta) ** 2, axis=1)

    region = TruncatedPrior(prior, log_q, -0.25)  # the disc of radius 0.5
    a, b = region.sample(64, np.random.default_rng(3)), region.sample(64, np.random.default_rng(3))
    assert np.array_equal(a, b) and np.all(np.sum(a**2, axis=1) <= 0.25)
    assert abs(math.exp(region.log_mass) - math.pi * 0.25 / 4) < 0.02
    empty = TruncatedPrior(prior, log_q, 1.0, max_draws=10_000)  # nothing has log q >= 1
    theta = empty.sample(64, np.random.default_rng(3))
    assert empty.fell_back and empty.drawn == 10_000 and theta.shape == (64, 2)
    assert np.array_equal(empty.log_prob(theta), prior.log_prob(theta))  # the prior's own density


def test_hpd_threshold_leaves_eps_outside():
    values = np.random.default_rng(0).normal(size=100_000)
    assert abs(np.mean(values < hpd_threshold(values, 0.1)) - 0.1) < 1e-3
    with pytest.raises(ValueError, match="no finite"):
        hpd_threshold(np.array([np.nan, -np.inf]), 0.1)


def two_moons(**overrides) -> RunConfig:
    base = {"problem": {"name": "two_moons"},
            "estimator": {"name": "flow", "hidden": [16, 16], "normalize": True},
            "proposal": {"method": "truncated", "region_draws": 2000},
            "training": {"steps": 3, "warmup_steps": 1},
            "buffer": {"simulations_per_step": 64, "prior_fraction": 0.25}}
    return with_overrides(RunConfig.model_validate(base), overrides)


def test_the_sampler_path_draws_what_the_inline_path_draws():
    """Inline, propose draws from the region of the weights version in force; a Ray sampler from
    its own RegionCache, loading the version the trainer shipped (regions.Weights, here a copy
    of its state dict): the same rows, bit for bit. The prior share is drawn first from the
    untruncated prior, the rest inside the region. A version is kept for region_every steps."""
    config = two_moons(**{"proposal.region_every": 2})
    state = new_state(config)
    state.step = 1  # past the warm-up
    inline = loop.propose(state, 1)
    steer = loop.steer_for(state, 1)
    assert isinstance(steer, regions.Weights) and steer.version == 1
    sampler = regions.RegionCache(config, state.simulator)
    region = sampler.region(regions.Weights(1, "ref"), load=lambda ref: {k: v.clone() for k, v in steer.state.items()})
    shipped = loop.propose_from(config, state.prior, 1, region, state.prior_fraction)
    assert np.array_equal(inline.theta, shipped.theta) and np.array_equal(inline.log_q, shipped.log_q)
    proposal = inline.origin == Origin.PROPOSAL
    assert np.count_nonzero(~proposal) == 16 and np.all(region.inside(inline.theta[proposal]))
    # log p - log Z, Z <= 1 (an untrained flow's region may hold the whole prior box)
    assert np.allclose(inline.log_q[proposal], inline.log_prior[proposal] - region.log_mass)
    assert region.log_mass <= 0
    assert np.array_equal(inline.log_q[~proposal], inline.log_prior[~proposal])
    with torch.no_grad():  # the live weights move on; the version in force stays for region_every steps
        next(state.estimator.parameters()).add_(0.1)
    state.step = 2
    assert loop.steer_for(state, 2) is steer
    state.step = 3
    assert loop.steer_for(state, 3).version == 3


def test_a_truncated_proposal_needs_an_estimator_with_a_density():
    with pytest.raises(ConfigError) as caught:
        check_config(with_overrides(RunConfig(), {"proposal.method": "truncated"}))
    assert caught.value.loc == ("proposal", "method")
    check_config(two_moons())
    with pytest.raises(ValueError, match="does not apply"):
        with_overrides(two_moons(), {"proposal.discard_log_ratio": -5.0})


def run_rows(config):
    from falcon_lite.engine.inline import run_inline, scratch_run
    from falcon_lite.store import runs
    from falcon_lite.store.db import session_factory

    with scratch_run(config, prefix="flr-seq-") as (engine, run_id):
        run_inline(engine, run_id)
        with session_factory(engine).begin() as s:
            assert runs.get_run(s, run_id).status == "completed"
            return runs.metrics_since(s, run_id, limit=None)


def test_sample_checks_land_in_metrics_rows_at_their_cadence():
    """c2st (the problem has reference samples), TARP and HPD coverage on VALIDATION rows, and
    the marginals: at steps 0, 4 and the last one (diagnostics otherwise every 10 steps)."""
    config = two_moons(**{"training.steps": 7, "training.c2st_every": 4, "training.coverage_every": 4,
                          "training.diagnostics_every": 10, "buffer.validation_size": 32})
    rows = run_rows(config)
    assert [r["step"] for r in rows] == [0, 4, 6]
    for row in rows:
        assert 0.0 <= row["c2st"] <= 1.0 and 0.0 <= row["tarp_error"] <= 1.0 and 0.0 <= row["hpd_error"] <= 1.0
        assert {"hpd_coverage_50", "hpd_coverage_95", "tarp_ecp_50", "tarp_ecp_95"} <= set(row)
        for d in range(2):
            assert row[f"marginal_q05_{d}"] <= row[f"marginal_q50_{d}"] <= row[f"marginal_q95_{d}"]
            assert row[f"marginal_std_{d}"] > 0
    assert rows[-1]["c2st"] > 0.6  # an untrained flow is told from the posterior


SEQUENTIAL = {"problem": {"name": "gaussian_linear", "params": {"dim": 2}},
              "estimator": {"name": "flow", "flow": "maf", "hidden": [32, 32], "normalize": True},
              "proposal": {"method": "truncated", "region_draws": 2000},
              "buffer": {"simulations_per_step": 64, "min_training": 64, "max_training": 4000,
                         "prior_fraction": 0.1},
              "training": {"steps": 300, "warmup_steps": 50, "batch_size": 128, "lr": 5e-3, "lr_after_warmup": 5e-3,
                           "diagnostics_every": 50, "c2st_every": 1000}}


def test_a_sequential_flow_run_reaches_the_known_posterior():
    """gaussian_linear (2-D, exact Gaussian posterior with reference samples): 50 prior-only
    steps, then 250 rounds, each drawing 90 % of its batch from the truncated prior of the newest
    weights; the estimate at x_obs is told from the reference by C2ST no better than 0.6."""
    rows = run_rows(RunConfig.model_validate(SEQUENTIAL))
    assert rows[-1]["step"] == 299
    assert rows[-1]["prior_drawn_share"] < 0.3  # most rows came from the proposal rounds
    assert rows[-1]["c2st"] <= 0.6, rows[-1]


def test_a_truncated_run_stops_and_resumes_exactly(tmp_path):
    """The weights version in force is checkpointed: a run stopped between two regions and
    resumed draws what it would have drawn (metrics equal to a run never stopped)."""
    from falcon_lite.engine.inline import run_inline
    from falcon_lite.store import runs
    from falcon_lite.store.db import make_engine, migrate, session_factory

    url = f"sqlite:///{tmp_path / 'resume.db'}"
    migrate(url)
    config = two_moons(**{"training.steps": 24, "training.warmup_steps": 4, "training.checkpoint_every": 5,
                          "proposal.region_every": 7, "proposal.hpd_epsilon": 0.5})  # a region that bites
    engine = make_engine(url)

    def run(stop_at=None):
        with session_factory(engine).begin() as s:
            run_id = runs.create_run(s, config).id
        seen = []
        run_inline(engine, run_id, should_stop=lambda: stop_at is not None and len(seen) >= stop_at,
                   on_step=lambda step, row: seen.append(step))
        if stop_at is not None:
            run_inline(engine, run_id)
        with session_factory(engine).begin() as s:
            return runs.metrics_since(s, run_id, limit=None)

    try:
        straight, resumed = run(), run(stop_at=15)  # version 11 in force at step 15 (taken at 4, 11, 18)
    finally:
        engine.dispose()
    assert [r["step"] for r in straight] == list(range(24)) and resumed == straight
