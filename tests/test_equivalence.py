"""The scan and diffrax backends compared sample for sample: they share each chain's noise
(`rsnjax.sampling.step_noise` of the global step), so they differ only by floating-point rounding."""

import jax
import numpy as np
import pytest

import rsnjax
from rsnjax import targets


def _cases():
    net = rsnjax.ScoreNetwork(2, 32, key=jax.random.key(0))
    res = rsnjax.ReservoirSampler.from_score_network(net)
    return {"reservoir": (res, {}), "score-network": (net, {}), "target": (targets.double_peak(), {}),
            "reservoir-skew": (res, {"skew": rsnjax.skew_symmetric(2, scale=0.5)})}


@pytest.mark.parametrize("name", ["score-network", "reservoir-skew",
                                  pytest.param("reservoir", marks=pytest.mark.slow),
                                  pytest.param("target", marks=pytest.mark.slow)])
def test_scan_and_diffrax_give_the_same_samples_up_to_rounding(name):
    model, extra = _cases()[name]
    kw = dict(key=jax.random.key(5), num_chains=200, num_steps=50, burn_in=10, step_size=0.05,
              save_every=10, warn=False, **extra)
    scan = rsnjax.sample(model, **kw)
    dfx = rsnjax.sample(model, backend="diffrax", **kw)
    # Each step rounds differently (the scan loop uses a fused or split form of the same update):
    # a few float32 ulps of the state per step, accumulated over the 60 steps; the step is a
    # contraction on average, so the bound is loose (we see ~1e-6, the bound is ~1e-4).
    steps = 60
    bound = 4 * steps * np.finfo(np.float32).eps * (1 + np.abs(np.asarray(scan.trajectory)).max())
    np.testing.assert_allclose(dfx.samples, scan.samples, rtol=0, atol=bound)
    np.testing.assert_allclose(dfx.trajectory, scan.trajectory, rtol=0, atol=bound)
    # with other noise the chains would be O(1) apart: the bound is ~1e4 times smaller than that
    other = rsnjax.sample(model, **{**kw, "key": jax.random.key(6)})
    assert np.abs(np.asarray(other.samples) - np.asarray(scan.samples)).max() > 1000 * bound
