"""JAX cases: rsnjax itself, the straightforward JAX ways of doing the same work, BlackJAX, and
the machine's limits as JAX sees them. Run inside `worker.py`, which has configured JAX first."""

from __future__ import annotations

import math
import time

import numpy as np

from common import (STEP_SIZE, Prepared, finish, initial_reservoir_state, measure, reservoir_weights, skipped,
                    workload_name)


def _devices_label() -> str:
    import jax

    n = len(jax.local_devices())
    return f"{n} device{'s' if n > 1 else ''}"


# ----------------------------------------------------------------------------------------------
# rsnjax
# ----------------------------------------------------------------------------------------------


def _model(kind, dim, hidden, activation, dynamics=None):
    import jax

    import rsnjax

    if kind == "reservoir":
        return reservoir_weights(dim, hidden, activation)[1]
    if kind == "output":
        return reservoir_weights(dim, hidden, activation)[0]
    if kind == "so":
        return rsnjax.SamplerOnly(dim, dynamics=dynamics, activation=activation, key=jax.random.key(0))
    if kind == "target":
        return rsnjax.targets.ring_of_gaussians()
    raise ValueError(kind)


def rsnjax_sample(*, kind="reservoir", dim=2, hidden=1000, activation="tanh", dynamics=None,
                  chains, steps, repeats, backend="scan", block_size=None, label=None, kernel=True):
    """`rsnjax.sample` as a user calls it (initial state given, so its drawing is not timed).
    ``kernel=False``: with ``RSNJAX_KERNEL=0`` around every call (XLA's loop instead of the C++
    reservoir kernel; the diffrax backend never uses the kernel)."""
    import os

    import jax
    import jax.numpy as jnp

    import rsnjax

    model = _model(kind, dim, hidden, activation, dynamics)
    if kind == "reservoir":
        state0 = jnp.asarray(initial_reservoir_state(chains, hidden))
    else:
        state0 = jnp.asarray(np.random.default_rng(0).uniform(-2, 2, (chains, dim)).astype(np.float32))
    kw = dict(key=jax.random.key(1), num_chains=chains, num_steps=steps, step_size=STEP_SIZE,
              initial_state=state0, backend=backend, block_size=block_size, on_nonfinite="flag")
    def call():
        if kernel:
            return rsnjax.sample(model, **kw)
        before = os.environ.get("RSNJAX_KERNEL")
        os.environ["RSNJAX_KERNEL"] = "0"
        try:
            return rsnjax.sample(model, **kw)
        finally:
            if before is None:
                os.environ.pop("RSNJAX_KERNEL", None)
            else:
                os.environ["RSNJAX_KERNEL"] = before

    t0 = time.perf_counter()
    first = call()  # compiles (and is cached for the timed calls)
    first_total = time.perf_counter() - t0
    call()  # warm-up
    impl = label or f"rsnjax ({backend}, {_devices_label()}{'' if kernel else ', XLA loop: RSNJAX_KERNEL=0'})"
    wl = workload_name(kind, dim=dim, hidden=hidden, activation=activation, chains=chains, dynamics=dynamics)
    return Prepared(call, work=chains * steps, unit="chain-steps", row=dict(
        group="sampling", workload=wl, impl=impl, compile_s=first.compile_time, steps=steps, chains=chains,
        first_call_s=first_total, hidden=hidden if kind in ("reservoir", "output") else None, dim=dim,
        kind=kind, activation=activation, nonfinite=int(np.sum(np.asarray(first.nonfinite_step) >= 0))))


# ----------------------------------------------------------------------------------------------
# the straightforward JAX ways
# ----------------------------------------------------------------------------------------------


def _phi(activation):
    import jax
    import jax.numpy as jnp

    return {"tanh": jnp.tanh, "relu": jax.nn.relu}[activation]


def _compile(fn, *args):
    import jax

    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def plain_scan(*, kind="reservoir", dim=2, hidden=1000, activation="tanh", dynamics=None, chains, steps,
               repeats, label=None):
    """A straightforward `lax.scan` of the low-rank step in matmul form, all chains at once, no
    blocking, noise from one `jax.random.split` per step (the baseline of the 2× target)."""
    import jax
    import jax.numpy as jnp

    net, _, w = reservoir_weights(dim, hidden, activation) if kind in ("reservoir", "output") else (None, None, None)
    phi = _phi(activation)
    h = STEP_SIZE
    if w is not None:
        W_out, W_in, I, Nm = (jnp.asarray(w[k]) for k in ("W_out", "W_in", "I", "noise_map"))
        A, B, b = jnp.asarray(net.A), jnp.asarray(net.B), jnp.asarray(net.b)

    if kind == "reservoir":
        def step(carry, _):
            r, key = carry
            key, sub = jax.random.split(key)
            xi = jax.random.normal(sub, (r.shape[0], dim))
            x = r @ W_out.T
            r = r + h * (-r + phi(x @ W_in.T + I)) + math.sqrt(h) * (xi @ Nm.T)
            return (r, key), None
        state0 = jnp.asarray(initial_reservoir_state(chains, hidden))
    else:  # output-space Langevin: on the score network written out, or on a module's score
        if kind == "output":
            score = lambda x: -x + phi(x @ B.T + b) @ A.T  # noqa: E731
        else:
            model = _model(kind, dim, hidden, activation, dynamics)
            score = model.score if kind == "target" else model

        def step(carry, _):
            x, key = carry
            key, sub = jax.random.split(key)
            xi = jax.random.normal(sub, x.shape)
            return (x + h * score(x) + math.sqrt(2 * h) * xi, key), None
        state0 = jnp.asarray(np.random.default_rng(0).uniform(-2, 2, (chains, dim)).astype(np.float32))

    def run(state, key):
        return jax.lax.scan(step, (state, key), None, length=steps)[0][0]

    key = jax.random.key(1)
    compiled, compile_s = _compile(run, state0, key)
    jax.block_until_ready(compiled(state0, key))
    run = lambda: jax.block_until_ready(compiled(state0, key))  # noqa: E731
    wl = workload_name(kind, dim=dim, hidden=hidden, activation=activation, chains=chains, dynamics=dynamics)
    form = "matmul form" if kind in ("reservoir", "output") else "the model's score"
    return Prepared(run, work=chains * steps, unit="chain-steps", row=dict(group="sampling", workload=wl, impl=label or f"plain lax.scan ({form})", compile_s=compile_s,
                   steps=steps, chains=chains, hidden=hidden, dim=dim, kind=kind, activation=activation))


def vmap_per_chain(*, dim=2, hidden=1000, activation="tanh", chains, steps, repeats):
    """`jax.vmap` of a per-chain reservoir step (one key per chain and step from
    `jax.random.split`), in a `lax.scan` over steps."""
    import jax
    import jax.numpy as jnp

    _, _, w = reservoir_weights(dim, hidden, activation)
    phi = _phi(activation)
    h = STEP_SIZE
    W_out, W_in, I, Nm = (jnp.asarray(w[k]) for k in ("W_out", "W_in", "I", "noise_map"))

    def chain_step(r, key):
        xi = jax.random.normal(key, (dim,))
        x = W_out @ r
        return r + h * (-r + phi(W_in @ x + I)) + math.sqrt(h) * (Nm @ xi)

    def step(carry, _):
        r, key = carry
        key, sub = jax.random.split(key)
        return (jax.vmap(chain_step)(r, jax.random.split(sub, r.shape[0])), key), None

    def run(state, key):
        return jax.lax.scan(step, (state, key), None, length=steps)[0][0]

    state0 = jnp.asarray(initial_reservoir_state(chains, hidden))
    key = jax.random.key(1)
    compiled, compile_s = _compile(run, state0, key)
    jax.block_until_ready(compiled(state0, key))
    run = lambda: jax.block_until_ready(compiled(state0, key))  # noqa: E731
    wl = workload_name("reservoir", dim=dim, hidden=hidden, activation=activation, chains=chains)
    return Prepared(run, work=chains * steps, unit="chain-steps", row=dict(group="sampling", workload=wl, impl="jax.vmap of a per-chain step", compile_s=compile_s,
                   steps=steps, chains=chains, hidden=hidden, dim=dim, kind="reservoir", activation=activation))


def diffrax_user(*, dim=2, hidden=1000, activation="tanh", chains, steps, repeats):
    """diffrax as a user would write it for the reservoir: Euler, `UnsafeBrownianPath` over
    ``(chains, d)``, drift and noise in matmul form, all chains in one solve."""
    try:
        import diffrax
    except ImportError:
        return [skipped(group="sampling", workload=workload_name("reservoir", dim=dim, hidden=hidden,
                        activation=activation, chains=chains), impl="diffrax, user-written",
                        reason="diffrax not installed")]
    import jax
    import jax.numpy as jnp

    _, _, w = reservoir_weights(dim, hidden, activation)
    phi = _phi(activation)
    W_out, W_in, I, Nm = (jnp.asarray(w[k]) for k in ("W_out", "W_in", "I", "noise_map"))
    state0 = jnp.asarray(initial_reservoir_state(chains, hidden))

    def run(r0, key):
        drift = diffrax.ODETerm(lambda t, r, args: -r + phi((r @ W_out.T) @ W_in.T + I))
        path = diffrax.UnsafeBrownianPath(shape=jax.ShapeDtypeStruct((chains, dim), jnp.float32), key=key)

        class Noise(diffrax.AbstractTerm):
            def vf(self, t, y, args):
                return y

            def contr(self, t0, t1, **kwargs):
                return path.evaluate(t0, t1, **kwargs)

            def prod(self, vf, control):
                return control @ Nm.T

        terms = diffrax.MultiTerm(drift, Noise())
        sol = diffrax.diffeqsolve(terms, diffrax.Euler(), 0.0, steps * STEP_SIZE, STEP_SIZE, r0,
                                  stepsize_controller=diffrax.ConstantStepSize(),
                                  adjoint=diffrax.ForwardMode(), max_steps=steps + 1,
                                  saveat=diffrax.SaveAt(t1=True))
        return sol.ys[-1]

    key = jax.random.key(1)
    compiled, compile_s = _compile(run, state0, key)
    jax.block_until_ready(compiled(state0, key))
    run = lambda: jax.block_until_ready(compiled(state0, key))  # noqa: E731
    wl = workload_name("reservoir", dim=dim, hidden=hidden, activation=activation, chains=chains)
    return Prepared(run, work=chains * steps, unit="chain-steps", row=dict(group="sampling", workload=wl, impl="diffrax, user-written (matmul form, UnsafeBrownianPath)", compile_s=compile_s,
                   steps=steps, chains=chains, hidden=hidden, dim=dim, kind="reservoir", activation=activation))


def blackjax_langevin(*, kind="output", dim=2, hidden=1000, activation="tanh", dynamics=None,
                      chains, steps, repeats, algorithm="sgld"):
    """BlackJAX, `jax.vmap` over chains of one chain's kernel, in a `lax.scan` over steps.

    - ``sgld``: `blackjax.sgld` (unadjusted Langevin x + h·g + √(2h)·ξ) with a ``grad_estimator``
      that returns the model's score — the same dynamics as `rsnjax.sample` on that model.
    - ``mala``: `blackjax.mala` on a target's exact log-density (Metropolis-adjusted; only for
      ``kind="target"``, where a log-density exists).
    """
    wl = workload_name(kind, dim=dim, hidden=hidden, activation=activation, chains=chains, dynamics=dynamics)
    impl = f"BlackJAX {'SGLD (score as gradient)' if algorithm == 'sgld' else 'MALA (exact log-density)'}"
    try:
        import blackjax
    except ImportError:
        return [skipped(group="sampling", workload=wl, impl=impl, reason="blackjax not installed")]
    import jax
    import jax.numpy as jnp

    model = _model(kind, dim, hidden, activation, dynamics)
    score = model.score if kind == "target" else model
    h = STEP_SIZE
    if algorithm == "sgld":
        kernel = blackjax.sgld(lambda position, minibatch: score(position))

        def one(key, x):
            return kernel.step(key, x, None, h)
        init = lambda x: x  # noqa: E731
        get = lambda s: s  # noqa: E731
    else:
        kernel = blackjax.mala(model.log_prob, h)
        init = jax.vmap(kernel.init)

        def one(key, state):
            return kernel.step(key, state)[0]
        get = lambda s: s.position  # noqa: E731

    def step(carry, _):
        state, key = carry
        key, sub = jax.random.split(key)
        return (jax.vmap(one)(jax.random.split(sub, chains), state), key), None

    def run(x0, key):
        return get(jax.lax.scan(step, (init(x0), key), None, length=steps)[0][0])

    state0 = jnp.asarray(np.random.default_rng(0).uniform(-2, 2, (chains, dim)).astype(np.float32))
    key = jax.random.key(1)
    compiled, compile_s = _compile(run, state0, key)
    jax.block_until_ready(compiled(state0, key))
    run = lambda: jax.block_until_ready(compiled(state0, key))  # noqa: E731
    return Prepared(run, work=chains * steps, unit="chain-steps", row=dict(group="sampling", workload=wl, impl=impl, compile_s=compile_s, steps=steps, chains=chains,
                   hidden=hidden, dim=dim, kind=kind, activation=activation))


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


def rsnjax_fit(*, dim, hidden, batch, chunk, extra_chunks, repeats, activation="relu", data="target",
               optimizer="adam"):
    """`rsnjax.fit` optimiser steps per second. One optimiser object serves every call, so the
    compiled chunk is reused from the second call on; the first call's time (tracing and
    compilation included) is reported as ``first_call_s``. One timing is the difference between
    a run of ``1 + extra_chunks`` chunks and a run of one chunk, taken back to back, so the
    per-call set-up cancels. ``optimizer``: ``"adam"`` (as the PyTorch loop) or ``"sgd"`` (to
    show what the optimiser's own update costs)."""
    import jax
    import optax

    import rsnjax

    from common import dsm_step_cost, time_once

    net = rsnjax.ScoreNetwork(dim, hidden, activation=activation, key=jax.random.key(0))
    if data == "target":
        source = rsnjax.targets.ring_of_gaussians() if dim == 2 else rsnjax.targets.gaussian(
            np.zeros(dim, np.float32), np.ones(dim, np.float32))
    else:  # an MNIST-sized array of PCA-like features
        source = np.random.default_rng(0).standard_normal((10_000, dim)).astype(np.float32)
    opt = {"adam": optax.adam, "sgd": optax.sgd}[optimizer](1e-4)
    last = {}

    def run(num_chunks):
        model, hist = rsnjax.fit(net, source, sigmas=[0.5], steps_per_level=num_chunks * chunk,
                                 chunk_size=chunk, batch_size=batch, optimizer=opt,
                                 key=jax.random.key(2), progress=False,
                                 # the bare DSM step, as the PyTorch loop does it (fit's quality
                                 # remedies add work the comparison does not have)
                                 ema_decay=None, antithetic=False, confine=None)
        jax.block_until_ready(model)
        last["loss"] = float(np.nanmean(hist.loss[-10:]))

    def timer():
        one_wall, one_cpu = time_once(lambda: run(1))
        many_wall, many_cpu = time_once(lambda: run(1 + extra_chunks))
        last["fixed_s"] = one_wall - (many_wall - one_wall) / extra_chunks
        return max(many_wall - one_wall, 1e-9), max(many_cpu - one_cpu, 1e-9)

    t0 = time.perf_counter()
    run(1)
    first_s = time.perf_counter() - t0
    run(1 + extra_chunks)  # warm-up: the first timed runs after compilation are slower
    wl = workload_name("train", dim=dim, hidden=hidden, batch=batch)
    impl = "rsnjax.fit (jax, 1 device)" + ("" if optimizer == "adam" else f", {optimizer} instead of Adam")
    row = dict(group="training", workload=wl, impl=impl, first_call_s=first_s, optimizer=optimizer,
               steps=extra_chunks * chunk, chunk=chunk, dim=dim, hidden=hidden, batch=batch, data=data,
               **dsm_step_cost(dim=dim, hidden=hidden, batch=batch))

    return Prepared(lambda: run(1 + extra_chunks), work=extra_chunks * chunk, unit="steps", row=row,
                    timer=timer, extra=lambda: {"fixed_s": last.get("fixed_s"), "final_loss": last.get("loss")})


# ----------------------------------------------------------------------------------------------
# the machine's limits, as JAX sees them
# ----------------------------------------------------------------------------------------------


def phi_throughput(*, activation, hidden=1000, block=1000, steps, repeats):
    """φ evaluations per second, in cache, on all local devices: the sampler's own layout (chains
    sharded over devices, ``block × hidden`` blocks, a `lax.scan` of steps) with the step replaced
    by ``y ← φ(y)`` (tanh) or ``y ← φ(y) − c`` (relu: one read-modify-write pass per step)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    devices = jax.local_devices()
    ndev = len(devices)
    blocks_per_device = 2
    y0 = jnp.asarray(np.random.default_rng(0).uniform(-2, 2, (ndev * blocks_per_device * block, hidden)),
                     jnp.float32)
    if activation == "tanh":
        op = jnp.tanh
    else:
        op = lambda y: jax.nn.relu(y) - 0.5  # noqa: E731

    def per_device(y):
        def one(b):
            return jax.lax.scan(lambda s, _: (op(s), None), b, None, length=steps)[0]
        return jax.lax.map(one, y.reshape(-1, block, hidden)).reshape(y.shape)

    fn = per_device
    if ndev > 1:
        fn = jax.shard_map(per_device, mesh=Mesh(np.array(devices), ("c",)), in_specs=P("c"),
                           out_specs=P("c"), check_vma=False)
    compiled, compile_s = _compile(fn, y0)
    jax.block_until_ready(compiled(y0))
    run = lambda: jax.block_until_ready(compiled(y0))  # noqa: E731
    work = y0.shape[0] * steps * hidden
    what = "tanh evaluations" if activation == "tanh" else "relu read-modify-write passes"
    return Prepared(run, work=work, unit="elements", row=dict(group="limits", workload=f"φ = {activation}, {block}×{hidden} blocks in cache",
                   impl=f"XLA, {_devices_label()}",
                   compile_s=compile_s, activation=activation, hidden=hidden, devices=ndev, what=what))


def jax_matmul(*, size=2048, repeats):
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), jnp.float32)
    compiled, _ = _compile(lambda x: x @ x, a)
    jax.block_until_ready(compiled(a))
    run = lambda: jax.block_until_ready(compiled(a))  # noqa: E731
    return Prepared(run, work=2 * size**3, unit="FLOP", row=dict(
        group="limits", workload=f"float32 matmul {size}×{size}", impl=f"XLA ({_devices_label()})"))


def jax_stream(*, megabytes=256, repeats):
    import jax
    import jax.numpy as jnp

    n = megabytes * 2**20 // 4
    a = jnp.ones((n,), jnp.float32)
    compiled, _ = _compile(lambda x: x * 1.0001 + 0.5, a)
    jax.block_until_ready(compiled(a))
    run = lambda: jax.block_until_ready(compiled(a))  # noqa: E731
    return Prepared(run, work=2 * n * 4, unit="bytes", row=dict(
        group="limits", workload=f"streaming y = a·x + b, {megabytes} MB in, {megabytes} MB out",
        impl=f"XLA ({_devices_label()})"))


# ----------------------------------------------------------------------------------------------
# scaling and memory
# ----------------------------------------------------------------------------------------------


def scaling_point(*, chains, hidden, dim, activation="tanh", elements=2e9, repeats=2):
    """One point of the scaling study: `rsnjax.sample` on a reservoir, the number of steps chosen
    so that a timed run does about ``elements`` unit-updates (chains × steps × N, more work per
    unit for larger d). Run in its own process, so its peak memory is this configuration's."""
    cost = chains * hidden * (1 + dim / 8)
    steps = int(min(20_000, max(5, round(elements / cost))))
    prepared = rsnjax_sample(kind="reservoir", dim=dim, hidden=hidden, activation=activation, chains=chains,
                             steps=steps, repeats=repeats)
    rows = [finish(prepared, measure(prepared.run, repeats=repeats))]
    for row in rows:
        row["group"] = "scaling"
        row["state_mb"] = chains * hidden * 4 / 2**20
        row["seconds_per_chain_step"] = row["best_s"] / (chains * steps)
    return rows


def idle_process(**_):
    """The memory of a process that imported JAX and rsnjax and ran one tiny computation."""
    import jax.numpy as jnp

    import rsnjax  # noqa: F401

    float(jnp.ones(3).sum())
    return [{"group": "scaling", "workload": "idle process (jax + rsnjax imported)", "impl": "baseline"}]
