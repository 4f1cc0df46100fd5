"""PyTorch cases: the original implementation's approach (a dense N×N W_rec stepped in a Python
loop of CPU ops), a low-rank PyTorch loop, and the DSM training loop with Adam. Eager mode,
PyTorch's default intra-op threads (one per core), float32, no autograd while sampling, denormals
flushed to zero (`torch.set_flush_denormal(True)`, XLA's default on CPU)."""

from __future__ import annotations

import math
import time

import numpy as np

from common import (STEP_SIZE, Prepared, dsm_step_cost, initial_reservoir_state, reservoir_weights, skipped,
                    workload_name)


def _torch():
    """torch, with denormals flushed to zero as XLA does on CPU by default. (Without it the DSM
    loop below runs ~80× slower on this machine: Adam's second-moment state goes denormal.)"""
    try:
        import torch
    except ImportError:
        return None
    torch.set_flush_denormal(True)
    return torch


def reservoir(*, dim=2, hidden=1000, activation="tanh", chains, steps, repeats, dense=True):
    """Euler–Maruyama on the reservoir, one Python iteration per step:
    ``r ← r + h(−r + φ(r W_recᵀ + I)) + √h · ξ σᵀ`` with W_rec dense (``dense=True``, the authors'
    approach) or applied as its rank-d factors."""
    impl = "PyTorch, dense W_rec (Python loop)" if dense else "PyTorch, low-rank (Python loop)"
    wl = workload_name("reservoir", dim=dim, hidden=hidden, activation=activation, chains=chains)
    torch = _torch()
    if torch is None:
        return [skipped(group="sampling", workload=wl, impl=impl, reason="torch not installed")]
    _, res, w = reservoir_weights(dim, hidden, activation)
    phi = {"tanh": torch.tanh, "relu": torch.relu}[activation]
    t0 = time.perf_counter()
    W_out, W_in, I, Nm = (torch.from_numpy(w[k]) for k in ("W_out", "W_in", "I", "noise_map"))
    W_rec = (W_in @ W_out).contiguous() if dense else None
    setup_s = time.perf_counter() - t0
    r0 = torch.from_numpy(initial_reservoir_state(chains, hidden))
    h, sh = STEP_SIZE, math.sqrt(STEP_SIZE)
    gen = torch.Generator().manual_seed(0)

    def run():
        r = r0
        with torch.no_grad():
            for _ in range(steps):
                xi = torch.randn(chains, dim, generator=gen)
                rec = r @ W_rec.T if dense else (r @ W_out.T) @ W_in.T
                r = r + h * (-r + phi(rec + I)) + sh * (xi @ Nm.T)
        return r

    run()  # warm-up
    return Prepared(run, work=chains * steps, unit="chain-steps", row=dict(
        group="sampling", workload=wl, impl=f"{impl}, {torch.get_num_threads()} threads", compile_s=None,
        setup_s=setup_s, steps=steps, chains=chains, hidden=hidden, dim=dim, kind="reservoir",
        activation=activation))


def output_langevin(*, dim=2, hidden=1000, activation="tanh", chains, steps, repeats):
    """Output-space Langevin on the score network, PyTorch eager, one Python iteration per step."""
    impl = "PyTorch, eager (Python loop)"
    wl = workload_name("output", dim=dim, hidden=hidden, activation=activation, chains=chains)
    torch = _torch()
    if torch is None:
        return [skipped(group="sampling", workload=wl, impl=impl, reason="torch not installed")]
    net, _, _ = reservoir_weights(dim, hidden, activation)
    A, B, b = (torch.from_numpy(np.array(a, np.float32)) for a in (net.A, net.B, net.b))
    phi = {"tanh": torch.tanh, "relu": torch.relu}[activation]
    x0 = torch.from_numpy(np.random.default_rng(0).uniform(-2, 2, (chains, dim)).astype(np.float32))
    h, s2h = STEP_SIZE, math.sqrt(2 * STEP_SIZE)
    gen = torch.Generator().manual_seed(0)

    def run():
        x = x0
        with torch.no_grad():
            for _ in range(steps):
                s = -x + phi(x @ B.T + b) @ A.T
                x = x + h * s + s2h * torch.randn(chains, dim, generator=gen)
        return x

    run()
    return Prepared(run, work=chains * steps, unit="chain-steps", row=dict(
        group="sampling", workload=wl, impl=f"{impl}, {torch.get_num_threads()} threads", steps=steps,
        chains=chains, hidden=hidden, dim=dim, kind="output", activation=activation))


def dsm_training(*, dim, hidden, batch, steps, repeats, activation="relu", data="target", threads=None):
    """The DSM training loop in PyTorch: ``s(x) = −x + A φ(Bx + b)`` as two ``nn.Linear`` layers
    (A without bias, PyTorch's default initialisation, as the authors' code), Adam(1e-4),
    loss ½·mean‖s(x + σε) + ε/σ‖², one Python iteration per step. Data: fresh draws from the
    ring of 8 Gaussians made with torch ops (d = 2), or batches indexed from an in-memory
    ``(10000, d)`` tensor by a per-epoch ``randperm`` (the array case; no DataLoader).
    ``threads``: PyTorch intra-op threads (default: PyTorch's, one per core)."""
    impl = "PyTorch, eager Adam loop"
    wl = workload_name("train", dim=dim, hidden=hidden, batch=batch)
    torch = _torch()
    if torch is None:
        return [skipped(group="training", workload=wl, impl=impl, reason="torch not installed")]
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    phi = {"tanh": torch.tanh, "relu": torch.relu}[activation]
    B = torch.nn.Linear(dim, hidden)
    A = torch.nn.Linear(hidden, dim, bias=False)
    opt = torch.optim.Adam(list(B.parameters()) + list(A.parameters()), lr=1e-4)
    sigma = 0.5
    if data == "target":
        angles = torch.arange(8) * (2 * math.pi / 8)
        means = 2.0 * torch.stack([torch.cos(angles), torch.sin(angles)], 1)

        def draw(_step):
            return means[torch.randint(0, 8, (batch,))] + 0.3 * torch.randn(batch, 2)
    else:
        table = torch.randn(10_000, dim)
        per_epoch = table.shape[0] // batch
        perm = [torch.randperm(table.shape[0])]

        def draw(step):
            pos = step % per_epoch
            if pos == 0:
                perm[0] = torch.randperm(table.shape[0])
            return table[perm[0][pos * batch:(pos + 1) * batch]]

    def one_step(step):
        x = draw(step)
        eps = torch.randn_like(x)
        noisy = x + sigma * eps
        s = -noisy + A(phi(B(noisy)))
        loss = 0.5 * ((s + eps / sigma) ** 2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def run():
        loss = None
        for k in range(steps):
            loss = one_step(k)
        return float(loss.detach())

    for k in range(min(steps, 20)):  # warm-up
        one_step(k)
    return Prepared(run, work=steps, unit="steps", row=dict(
        group="training", workload=wl, impl=f"{impl}, {torch.get_num_threads()} threads", steps=steps,
        dim=dim, hidden=hidden, batch=batch, data=data, optimizer="adam",
        **dsm_step_cost(dim=dim, hidden=hidden, batch=batch)))


def torch_matmul(*, size=2048, repeats):
    torch = _torch()
    if torch is None:
        return [skipped(group="limits", workload=f"float32 matmul {size}×{size}", impl="PyTorch",
                        reason="torch not installed")]
    a = torch.randn(size, size)
    a @ a
    return Prepared(lambda: a @ a, work=2 * size**3, unit="FLOP", row=dict(
        group="limits", workload=f"float32 matmul {size}×{size}", impl=f"PyTorch ({torch.get_num_threads()} threads)"))
