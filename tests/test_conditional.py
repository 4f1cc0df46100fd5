"""Conditional circuits: the exact mapping with input currents (W_out r_t = x_t with inputs,
time-varying included), conditional DSM, fit on pairs, sample(inputs=...), checkpoints."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsnjax
from rsnjax import ConditionalSamplerOnly, ConditionalScoreNetwork, ReservoirSampler
from rsnjax import checkpoint as ckpt
from rsnjax import posterior
from rsnjax.sampling import chain_key_words, step_noise


def _f64(model):
    return jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model)


def _net64(hidden=128, activation="relu", cond_dim=2):
    net = _f64(ConditionalScoreNetwork(2, cond_dim, hidden, activation=activation, key=jax.random.key(0)))
    return eqx.tree_at(lambda m: (m.A, m.C), net, (net.A * 3.0, net.C * 4.0))  # real structure, strong inputs


# --- the mapping ---------------------------------------------------------------------------------


def test_mapping_carries_the_input_weights():
    net = ConditionalScoreNetwork(2, 3, 40, activation="tanh", key=jax.random.key(0))
    res = ReservoirSampler.from_score_network(net, tau=0.5)
    np.testing.assert_array_equal(res.W_cond, net.C)
    np.testing.assert_array_equal(res.W_out, net.A)
    np.testing.assert_array_equal(res.W_in, net.B)
    assert res.cond_dim == 3 and net.cond_dim == 3
    x = jax.random.normal(jax.random.key(1), (5, 2))
    c = jax.random.normal(jax.random.key(2), (5, 3))
    np.testing.assert_allclose(res.output_score(x, c), net(x, c), rtol=1e-6)
    r = jax.random.normal(jax.random.key(3), (5, 40))
    np.testing.assert_allclose(res.rates(r, c), jnp.tanh(res.readout(r) @ net.B.T + c @ net.C.T + net.b), atol=1e-6)
    back = res.to_score_network()
    assert isinstance(back, ConditionalScoreNetwork)
    np.testing.assert_allclose(back(x, c), net(x, c), rtol=1e-6)
    # one fixed input is an ordinary network with the bias b + C c
    np.testing.assert_allclose(net.conditioned(c[0])(x), net(x, c[0]), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="inputs"):
        res.output_score(x)
    with pytest.raises(ValueError, match="inputs"):
        ReservoirSampler.from_score_network(rsnjax.ScoreNetwork(2, 40, key=jax.random.key(0))).rates(r, c)


def _input_cases(num_chains, cond_dim=2):
    per_chain = jax.random.normal(jax.random.key(7), (num_chains, cond_dim))
    segments = jax.random.normal(jax.random.key(8), (3, num_chains, cond_dim))
    return {
        "shared": (jnp.array([0.7, -1.2]), None),
        "per_chain": (per_chain, None),
        "switching": (segments, [150, 700]),
    }


@pytest.mark.parametrize("case", ["shared", "per_chain", "switching"])
@pytest.mark.parametrize("accelerated", [False, True])
def test_reservoir_readout_equals_conditional_langevin_with_inputs(case, accelerated):
    """The reservoir (N = 128) driven by I + W_cond c_t and the output-space Langevin of
    s(x, c_t), fed the same noise: W_out r_t = x_t at every saved step (float64, 1000 steps),
    with one input for all chains, one per chain, and inputs that switch twice."""
    with jax.enable_x64(True):
        net = _net64()
        res = ReservoirSampler.from_score_network(net)
        inputs, switch = _input_cases(32)[case]
        skew = rsnjax.skew_symmetric(2, scale=0.7).astype(jnp.float64) if accelerated else None
        r0 = jax.random.normal(jax.random.key(1), (32, 128), jnp.float64)
        kw = dict(key=jax.random.key(2), num_chains=32, num_steps=900, burn_in=100, step_size=0.01,
                  save_every=1, skew=skew, inputs=inputs, switch_steps=switch, warn=False)
        out_r = rsnjax.sample(res, initial_state=r0, return_state=True, **kw)
        out_x = rsnjax.sample(net, initial_state=res.readout(r0), **kw)
        assert out_r.trajectory.dtype == jnp.float64
        assert out_r.trajectory.shape == (900, 32, 2)
        assert out_r.final_state.shape == (32, 128)
        scale = float(jnp.max(jnp.abs(out_x.trajectory)))
        assert scale > 0.5
        np.testing.assert_allclose(out_r.trajectory, out_x.trajectory, rtol=0, atol=1e-9 * scale)
        np.testing.assert_allclose(res.readout(out_r.final_state), out_x.samples, atol=1e-9 * scale)


def test_a_constant_input_is_a_bias():
    """With a constant input c, the driven reservoir and network give exactly the samples of the
    unconditional circuits with the bias b + C c (same key, same start: the same noise)."""
    with jax.enable_x64(True):
        net = _net64()
        c = jnp.array([0.4, -0.9])
        plain = net.conditioned(c)
        res, res_plain = ReservoirSampler.from_score_network(net), ReservoirSampler.from_score_network(plain)
        r0 = jax.random.normal(jax.random.key(1), (16, 128), jnp.float64)
        kw = dict(key=jax.random.key(3), num_chains=16, num_steps=300, step_size=0.01, save_every=10, warn=False)
        for model, reference, start in [(net, plain, res.readout(r0)), (res, res_plain, r0)]:
            a = rsnjax.sample(model, inputs=c, initial_state=start, **kw).trajectory
            b = rsnjax.sample(reference, initial_state=start, **kw).trajectory
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
        # and the drawn start (init) is the same as the unconditional sampler's
        a = rsnjax.sample(net, inputs=c, init="normal", **kw).samples
        b = rsnjax.sample(plain, init="normal", **kw).samples
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


def test_switching_inputs_follow_a_reference_loop():
    """Euler–Maruyama written out step by step with `step_noise`: step t (burn-in included) uses
    segment #{switch_steps <= t}."""
    with jax.enable_x64(True):
        net = _net64(hidden=32)
        num_chains, burn_in, num_steps, h = 8, 20, 60, 0.02
        switch = [15, 50]
        inputs = jax.random.normal(jax.random.key(5), (3, num_chains, 2)) * 2.0
        x0 = jax.random.normal(jax.random.key(6), (num_chains, 2), jnp.float64)
        key = jax.random.key(9)
        out = rsnjax.sample(net, key=key, num_chains=num_chains, num_steps=num_steps, burn_in=burn_in,
                            step_size=h, initial_state=x0, inputs=inputs, switch_steps=switch,
                            save_every=1, warn=False)
        words = chain_key_words(jax.random.split(key)[1], jnp.arange(num_chains, dtype=jnp.uint32))
        step = jax.jit(lambda x, c, t: x + h * net(x, c) + math.sqrt(2 * h) * step_noise(words, t, 2, jnp.float64))
        x, saved = x0, []
        for t in range(burn_in + num_steps):
            seg = int(np.sum(t >= np.asarray(switch)))
            x = step(x, inputs[seg], t)
            if t >= burn_in:
                saved.append(x)
        np.testing.assert_allclose(out.trajectory, jnp.stack(saved), rtol=0, atol=1e-11)


def test_conditional_sampler_only_circuits_sample_with_inputs():
    for dynamics in ("synaptic_current", "firing_rate"):
        so = ConditionalSamplerOnly(2, 1, dynamics=dynamics, key=jax.random.key(0))
        c = jnp.array([1.5])
        x = jax.random.normal(jax.random.key(1), (4, 2))
        np.testing.assert_allclose(so.conditioned(c)(x), so(x, c), rtol=1e-6, atol=1e-7)
        kw = dict(key=jax.random.key(3), num_chains=8, num_steps=50, step_size=0.01, initial_state=x[0], warn=False)
        a = rsnjax.sample(so, inputs=c, **kw).samples
        b = rsnjax.sample(so.conditioned(c), **kw).samples
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sample_input_errors_name_the_argument():
    net = ConditionalScoreNetwork(2, 2, 8, key=jax.random.key(0))
    kw = dict(key=jax.random.key(1), num_chains=4, num_steps=10, step_size=0.01)
    with pytest.raises(ValueError, match="inputs"):
        rsnjax.sample(net, **kw)  # a conditional model needs inputs
    with pytest.raises(ValueError, match="inputs"):
        rsnjax.sample(ReservoirSampler.from_score_network(net), **kw)
    with pytest.raises(ValueError, match="inputs"):
        rsnjax.sample(rsnjax.ScoreNetwork(2, 8, key=jax.random.key(0)), inputs=jnp.ones(2), **kw)
    with pytest.raises(ValueError, match="inputs"):
        rsnjax.sample(net, inputs=jnp.ones(3), **kw)
    with pytest.raises(ValueError, match="inputs"):
        rsnjax.sample(net, inputs=jnp.ones((5, 2)), **kw)
    with pytest.raises(ValueError, match="switch_steps"):
        rsnjax.sample(net, inputs=jnp.ones((3, 2)), switch_steps=[5, 5], **kw)
    with pytest.raises(ValueError, match="switch_steps"):
        rsnjax.sample(net, inputs=jnp.ones((2, 2)), switch_steps=[10], **kw)  # not within the run
    with pytest.raises(ValueError, match="inputs"):
        rsnjax.sample(net, inputs=jnp.ones((3, 2)), switch_steps=[5], **kw)  # 2 segments, 3 given
    with pytest.raises(ValueError, match="inputs"):
        rsnjax.sample(net, inputs=jnp.array([jnp.nan, 1.0]), **kw)


# --- conditional DSM and fit -------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "tanh", "softplus"])
def test_hand_written_conditional_gradient_equals_autodiff(activation):
    net = ConditionalScoreNetwork(2, 3, 50, activation=activation, key=jax.random.key(0))
    k = jax.random.split(jax.random.key(1), 3)
    x, c, eps = jax.random.normal(k[0], (64, 2)), jax.random.normal(k[1], (64, 3)), jax.random.normal(k[2], (64, 2))
    loss, grads = rsnjax.conditional_dsm_value_and_grad(net, x, c, eps, 0.3)
    ref_loss, ref = eqx.filter_value_and_grad(lambda m: rsnjax.conditional_dsm_loss_with_noise(m, x, c, eps, 0.3))(net)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))
    # the penalty's gradient by hand, too
    from rsnjax.conditional import conditional_penalty_grad

    from rsnjax.training import confinement_penalty

    axis = jax.random.normal(jax.random.key(4), (64, 2))
    near, far = x * 3, x * 6
    got = conditional_penalty_grad(net, near, far, c, axis)
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def penalty(p):
        m = eqx.combine(p, static)
        return confinement_penalty(m(near, c), m(far, c), near, far, axis)[0]

    want = jax.grad(penalty)(params)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))) + 1e-9)


def _pairs(num=512, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(num, 1)).astype(np.float32)
    x = (np.concatenate([c, -c], 1) + 0.3 * rng.normal(size=(num, 2))).astype(np.float32)
    return x, c


def test_fit_on_pairs_targets_and_callables():
    x, c = _pairs()
    net = ConditionalScoreNetwork(2, 1, 32, key=jax.random.key(0))
    kw = dict(steps_per_level=20, key=jax.random.key(1), progress=False)
    trained, hist = rsnjax.fit(net, (x, c), **kw)
    assert np.all(np.isfinite(hist.loss)) and isinstance(trained, ConditionalScoreNetwork)
    assert trained.extent is not None and trained.extent.dim == 2
    np.testing.assert_allclose(trained.extent.mean, x.mean(0), atol=1e-5)  # the extent of x, not of c
    assert not np.allclose(np.asarray(trained.C), np.asarray(net.C))
    target = posterior.cue_combination([0.5, 1.0])
    t_net, t_hist = rsnjax.fit(ConditionalScoreNetwork(1, 2, 16, key=jax.random.key(0)), target, **kw)
    assert np.all(np.isfinite(t_hist.loss))
    draw = lambda k, n: target.sample(k, n)  # noqa: E731
    c_net, _ = rsnjax.fit(ConditionalScoreNetwork(1, 2, 16, key=jax.random.key(0)), draw, **kw)
    assert np.all(np.isfinite(np.asarray(c_net.A)))
    so, so_hist = rsnjax.fit(ConditionalSamplerOnly(2, 1, key=jax.random.key(0)), (x, c), **kw)
    assert np.all(np.isfinite(so_hist.loss))
    # same key, same result
    again, _ = rsnjax.fit(net, (x, c), **kw)
    np.testing.assert_array_equal(again.A, trained.A)


def test_fit_pair_errors_name_the_argument():
    x, c = _pairs()
    net = ConditionalScoreNetwork(2, 1, 8, key=jax.random.key(0))
    kw = dict(steps_per_level=2, key=jax.random.key(1), progress=False)
    with pytest.raises(TypeError, match="pair"):
        rsnjax.fit(net, x, **kw)
    with pytest.raises(ValueError, match="rows"):
        rsnjax.fit(net, (x, c[:-1]), **kw)
    with pytest.raises(ValueError, match="cond_dim"):
        rsnjax.fit(net, (x, np.ones((len(x), 2))), **kw)
    with pytest.raises(ValueError, match="data"):
        rsnjax.fit(net, (x[:, :1], c), **kw)
    with pytest.raises(ValueError, match="pairs"):
        rsnjax.fit(net, rsnjax.targets.ring_of_gaussians(), **kw)  # a target of x alone: no pairs


def test_conditional_fit_resumes_bit_exactly(tmp_path):
    x, c = _pairs()
    net = ConditionalScoreNetwork(2, 1, 16, key=jax.random.key(0))
    kw = dict(sigmas=[1.0, 0.3], steps_per_level=8, chunk_size=4, key=jax.random.key(1), progress=False)
    reference, ref_hist = rsnjax.fit(net, (x, c), **kw)
    rsnjax.fit(net, (x, c), checkpoint_dir=tmp_path, max_chunks=3, **kw)
    resumed, hist = rsnjax.fit(net, (x, c), checkpoint_dir=tmp_path, resume=True, **kw)
    for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_array_equal(a, b)
    assert ref_hist.loss.tobytes() == hist.loss.tobytes()
    with pytest.raises(rsnjax.CheckpointError, match="data"):  # other pairs: refused
        rsnjax.fit(net, (x, c + 1), checkpoint_dir=tmp_path, resume=True, **kw)


@pytest.mark.parametrize("which", ["net", "so", "reservoir"])
def test_checkpoint_round_trip_of_conditional_models(tmp_path, which):
    net = ConditionalScoreNetwork(2, 3, 8, key=jax.random.key(0))
    model = {"net": net, "so": ConditionalSamplerOnly(2, 3, dynamics="firing_rate", key=jax.random.key(1)),
             "reservoir": ReservoirSampler.from_score_network(net, tau=0.5)}[which]
    model = jax.tree_util.tree_map(lambda a: a * 1.7 + 0.1 if eqx.is_inexact_array(a) else a, model)
    rsnjax.save(tmp_path / "m.ckpt", model)
    loaded = rsnjax.load(tmp_path / "m.ckpt")
    assert type(loaded) is type(model) and ckpt.model_spec(loaded) == ckpt.model_spec(model)
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(model)):
        np.testing.assert_array_equal(a, b)
