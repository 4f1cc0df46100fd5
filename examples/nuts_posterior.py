"""Train an RSN on posterior draws from NUTS (blackjax), then sample the posterior with the circuit.

    python examples/nuts_posterior.py            # 47 s on 2 CPU cores (docs/howto/nuts.md)
    python examples/nuts_posterior.py --tiny     # seconds (what the tests run)

The posterior is a Bayesian logistic regression on synthetic data (made here from a fixed key),
with a pytree position {"w": (2,), "b": ()}. Its log-density is handed to rsnjax with
`rsnjax.score_from_logdensity`, which gives the exact posterior score for the metrics. The draws
come from blackjax's NUTS when blackjax is installed, otherwise from rsnjax's own Langevin sampler
on the exact score: any sampler's draws, as a ``(num, d)`` array, train an RSN the same way.
Walk-through: docs/howto/nuts.md.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import rsnjax
from rsnjax import metrics


def make_posterior(key, num_data=200):
    """Log-density of w ~ N(0, I), b ~ N(0, 1), y ~ Bernoulli(sigmoid(X w + b)) on synthetic data."""
    kx, ky = jax.random.split(key)
    X = jax.random.normal(kx, (num_data, 2))
    true_w, true_b = jnp.array([1.5, -1.0]), 0.5
    y = jax.random.bernoulli(ky, jax.nn.sigmoid(X @ true_w + true_b)).astype(jnp.float32)

    def logdensity(p):
        logits = X @ p["w"] + p["b"]
        loglik = jnp.sum(y * jax.nn.log_sigmoid(logits) + (1 - y) * jax.nn.log_sigmoid(-logits))
        return loglik - 0.5 * jnp.sum(p["w"] ** 2) - 0.5 * p["b"] ** 2

    return logdensity


def nuts_draws(logdensity, position, key, num_draws, num_warmup):
    """Draws from blackjax's NUTS with window adaptation, flattened to (num_draws, d)."""
    import blackjax

    k_warm, k_run = jax.random.split(key)
    warmup = blackjax.window_adaptation(blackjax.nuts, logdensity)
    (state, params), _ = warmup.run(k_warm, position, num_steps=num_warmup)
    nuts = blackjax.nuts(logdensity, **params)

    def one(state, k):
        state, _ = nuts.step(k, state)
        return state, state.position

    _, positions = jax.lax.scan(one, state, jax.random.split(k_run, num_draws))
    return jax.vmap(lambda p: ravel_pytree(p)[0])(positions)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few seconds' run (for tests)")
    args = parser.parse_args(argv)
    num_draws, num_warmup, hidden, steps, chains = (
        (400, 200, 32, 100, 256) if args.tiny else (4000, 500, 256, 1500, 4000))

    key = jax.random.key(0)
    k_data, k_nuts, k_net, k_fit, k_sample, k_eval = jax.random.split(key, 6)
    logdensity = make_posterior(k_data)
    position = {"w": jnp.zeros(2), "b": jnp.array(0.0)}
    target = rsnjax.score_from_logdensity(logdensity, position)  # d = 3: ravel_pytree orders dict keys, so b, then w (2 entries)

    t0 = time.perf_counter()
    try:
        draws = nuts_draws(logdensity, position, k_nuts, num_draws, num_warmup)
        source = "blackjax NUTS"
    except ImportError:  # any sampler's draws will do; here Langevin on the exact score
        out = rsnjax.sample(target, key=k_nuts, num_chains=num_draws, num_steps=2000, step_size=5e-3,
                            init="zeros", warn=False)
        draws = out.samples
        source = "rsnjax Langevin on the exact score"
    draws = np.asarray(draws)
    print(f"{len(draws)} posterior draws from {source} in {time.perf_counter() - t0:.1f} s; "
          f"mean {np.round(draws.mean(0), 3)}")

    # Train a score network on the draws (noise levels from the data), map it onto a reservoir.
    net = rsnjax.ScoreNetwork(target.dim, hidden, key=k_net)
    net, history = rsnjax.fit(net, draws, steps_per_level=steps, key=k_fit, progress=False)
    reservoir = rsnjax.ReservoirSampler.from_score_network(net)
    step_size = rsnjax.stable_step_size(reservoir, draws)
    out = rsnjax.sample(reservoir, key=k_sample, num_chains=chains, num_steps=2000, step_size=step_size,
                        init="normal", burn_in=2000, save_every=200, warn=False)
    print(f"RSN (N = {hidden}) sampled {chains} chains, dt = {step_size:.2g}: R-hat {out.rhat:.3f}, "
          f"{out.num_escaped} escaped")

    # Compare with held-out draws, at equal sizes: the RSN's samples against the second half of the
    # draws, next to the first half of the draws against the second (the floor for that size;
    # NUTS draws are autocorrelated, so it is a little above an independent sample's floor).
    # The KSD uses the exact posterior score from the log-density.
    half = len(draws) // 2
    result = metrics.evaluate(out.samples[:half], target, key=k_eval, reference_samples=draws[half:],
                              noise_floor_repeats=0)
    ref = metrics.evaluate(draws[:half], target, key=k_eval, reference_samples=draws[half:],
                           noise_floor_repeats=0)
    print(f"| metric | {half} RSN samples vs {half} draws | {half} draws vs the other {half} |")
    print("|---|---|---|")
    for name in ("mean_error", "covariance_error", "mmd2", "sliced_w2", "ksd"):
        print(f"| {name} | {result[name]:.4g} | {ref[name]:.4g} |")
    return result, ref


if __name__ == "__main__":
    main()
