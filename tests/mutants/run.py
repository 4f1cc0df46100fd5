"""Hand-made mutants of the math files, applied one at a time, tested, and reverted.

Each mutant replaces one exact snippet (which must occur exactly once) in one of
rsnjax/dsm.py (DSM loss and gradient), reservoir.py (the mapping), sde.py (the step) and
sampling.py (the sampler loop), runs the fast tests that guard that file, and counts the mutant
as killed when they fail. The file is restored afterwards whatever happens.

    python tests/mutants/run.py                 # every mutant
    python tests/mutants/run.py dsm-sign sde-   # those whose name starts with one of these
    python tests/mutants/run.py --list

Run from the repository root with the package importable (``PYTHONPATH=$PWD``). Prints one line
per mutant and the kill rate; exit status 1 when a non-equivalent mutant survives.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# the fast tests that guard each file (pytest arguments)
TESTS = {
    "dsm": ["tests/test_training.py", "-k", "sigmas or dsm"],
    "reservoir": ["tests/test_reservoir.py"],
    "sde": ["tests/test_reservoir.py", "tests/test_sampling.py", "-k",
            "identity or pseudo_inverse or gaussian or burn_in or accelerated or reservoir"],
    "sampling": ["tests/test_sampling.py", "-k", "not sharded and not slow"],
    "_segments": ["tests/test_resume.py", "-k", "bit_identical or another_run or corrupt"],
}

# (name, file, original snippet, mutated snippet, equivalent?)
MUTANTS = [
    # --- dsm.py: the loss, the hand-written gradient, the schedule ---
    ("dsm-noisy-sign", "dsm.py", "    noisy = x + sigma * noise\n    residual = score_fn(noisy)",
     "    noisy = x - sigma * noise\n    residual = score_fn(noisy)", False),
    ("dsm-target-sign", "dsm.py", "residual = score_fn(noisy) + noise / sigma",
     "residual = score_fn(noisy) - noise / sigma", False),
    ("dsm-target-sigma2", "dsm.py", "residual = score_fn(noisy) + noise / sigma",
     "residual = score_fn(noisy) + noise / sigma**2", False),
    ("dsm-half", "dsm.py", "    return 0.5 * jnp.mean(jnp.sum(residual**2, axis=-1))\n\n\ndef dsm_loss(",
     "    return jnp.mean(jnp.sum(residual**2, axis=-1))\n\n\ndef dsm_loss(", False),
    ("dsm-grad-residual", "dsm.py", "residual = out - noisy + noise / sigma",
     "residual = out - noisy - noise / sigma", False),
    ("dsm-grad-batch", "dsm.py", "residual / x.shape[0])", "residual)", False),
    ("dsm-relu-derivative", "dsm.py", "return (pre > 0).astype(pre.dtype)",
     "return (pre >= -1e-3).astype(pre.dtype)", False),
    ("dsm-tanh-derivative", "dsm.py", "return 1 - h * h", "return 1 - h", False),
    ("dsm-grad-b", "dsm.py", "grad_b = jnp.sum(g_hidden, axis=0)", "grad_b = jnp.mean(g_hidden, axis=0)", False),
    ("dsm-grad-A-small", "dsm.py", "grad_A = jnp.stack([g[:, k] @ h for k in range(dim)])",
     "grad_A = jnp.stack([g[:, 0] @ h for k in range(dim)])", False),
    ("dsm-grad-B-large", "dsm.py", "grad_B = g_hidden.T @ inputs", "grad_B = (back.T @ inputs)", False),
    ("dsm-geometric", "dsm.py", "return np.geomspace(sigma_max, sigma_min, num_levels)",
     "return np.linspace(sigma_max, sigma_min, num_levels)", False),
    # --- reservoir.py: the mapping W_out = A, W_rec = B A, I = b, noise √2 A⁺ ---
    ("reservoir-noise-sqrt2", "reservoir.py",
     "noise_map = math.sqrt(2.0) * _pseudo_inverse_full_row_rank(np.asarray(W_out), \"W_out\")",
     "noise_map = _pseudo_inverse_full_row_rank(np.asarray(W_out), \"W_out\")", False),
    ("reservoir-pinv-transpose", "reservoir.py", "return (vt.T / s) @ u.T", "return (vt.T * s) @ u.T", False),
    ("reservoir-readout", "reservoir.py",
     "return check_array(r, \"r\", dim=self.hidden, finite=False) @ self.W_out.T",
     "return check_array(r, \"r\", dim=self.hidden, finite=False) @ self.W_out.T * 1.001", False),
    ("reservoir-leak", "reservoir.py", "return (self.rates(r, inputs) - r) / self.tau",
     "return (self.rates(r, inputs) - 0.9 * r) / self.tau", False),
    ("reservoir-output-score", "reservoir.py",
     "return -x + phi(x @ self.W_in.T + self._input(inputs)) @ self.W_out.T",
     "return -x + phi(x @ self.W_in.T) @ self.W_out.T", False),
    ("reservoir-from-net-bias", "reservoir.py",
     "return cls(net.A, net.B, net.b, activation=net.activation, tau=tau, extent=net.extent)\n",
     "return cls(net.A, net.B, 0 * net.b, activation=net.activation, tau=tau, extent=net.extent)\n", False),
    # --- sde.py: the Euler–Maruyama steps ---
    ("sde-generic-sqrt-h", "sde.py",
     "return state + step_size * drift + jnp.sqrt(step_size) * diffusion",
     "return state + step_size * drift + step_size * diffusion", False),
    ("sde-output-diffusion", "sde.py", "    def diffusion(self, noise):\n        return math.sqrt(2.0 / self.tau) * noise\n\n    def readout(self, state):\n        return state\n\n    @property",
     "    def diffusion(self, noise):\n        return math.sqrt(1.9 / self.tau) * noise\n\n    def readout(self, state):\n        return state\n\n    @property", False),
    ("sde-net-step-noise", "sde.py", "+ jnp.sqrt(2.0 * a) * noise", "+ jnp.sqrt(1.9 * a) * noise", False),
    ("sde-net-step-leak", "sde.py", "new = (1.0 - a) * state + a * (rates @ self.A.T)",
     "new = (1.0 - 0.9 * a) * state + a * (rates @ self.A.T)", False),
    ("sde-loop-noise", "sde.py", "new_c = (1.0 - a) * c + jnp.sqrt(step_size) * noise",
     "new_c = c + jnp.sqrt(step_size) * noise", False),
    ("sde-loop-bias", "sde.py",
     "new_u = (1.0 - a) * u + a * phi(low_rank_apply_rows(x, self.in_rows) + self.I)",
     "new_u = (1.0 - a) * u + a * phi(low_rank_apply_rows(x, self.in_rows))", False),
    ("sde-reservoir-step-half", "sde.py", "new, x = self.loop_step(self.loop_state(state), noise, step_size)",
     "new, x = self.loop_step(self.loop_state(state), noise, 0.5 * step_size)", False),
    ("sde-low-rank-skip", "sde.py", "    out = x[..., 0:1] * W[:, 0]\n    for j in range(1, k):",
     "    out = x[..., 0:1] * W[:, 0]\n    for j in range(2, k):", False),
    ("sde-skew-sign", "sde.py", "            s = s + s @ self.skew.T", "            s = s - s @ self.skew", True),
    # --- sampling.py: keys, noise, the loop ---
    ("sampling-burn-in", "sampling.py", "carry = run(carry, jnp.uint32(0), burn_in)\n",
     "carry = run(carry, jnp.uint32(0), burn_in + 1)\n", False),
    ("sampling-noise-step-index", "sampling.py", "noise = step_noise(keys, t, sde.dim, dtype)",
     "noise = step_noise(keys, t // 2, sde.dim, dtype)", False),
    ("sampling-noise-scale", "sampling.py", "return jnp.asarray(math.sqrt(2.0), dtype) * jax.lax.erf_inv(v)",
     "return jnp.asarray(1.4, dtype) * jax.lax.erf_inv(v)", False),
    ("sampling-chain-keys", "sampling.py", "jax.random.fold_in(root, c)", "jax.random.fold_in(root, c // 2)", False),
    ("sampling-bad-step", "sampling.py", "bad = jnp.where((bad < 0) & ~finite, t.astype(jnp.int32), bad)",
     "bad = jnp.where(~finite, t.astype(jnp.int32), bad)", False),
    ("sampling-save-start", "sampling.py", "c = run(c, start + s * jnp.uint32(save_every), save_every)",
     "c = run(c, start + s * jnp.uint32(save_every - 1), save_every)", False),
    ("sampling-readout-last", "sampling.py",
     "return (sde.state_from_loop(carry[0]), carry[1]), traj, sde.loop_readout(carry[0])",
     "return (sde.state_from_loop(carry[0]), carry[1]), traj, sde.loop_readout(sde.loop_state(r0))", False),
    # --- _segments.py: resumable sampling ---
    ("segments-global-step", "_segments.py", "cb = run(cb, t0, pre)", "cb = run(cb, jnp.uint32(0), pre)", False),
    ("segments-resume-trajectory", "_segments.py", "if per_segment_saved and start_segment > n_burn:",
     "if per_segment_saved and start_segment > n_burn + 1:", False),
    ("segments-run-check", "_segments.py", "if not isinstance(saved, dict) or saved != description:",
     "if not isinstance(saved, dict):", False),
    ("segments-overwrite", "_segments.py", "            if not resume:\n", "            if False:\n", False),
]


def _run_tests(group: str, timeout: float) -> tuple[bool, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow",
           *TESTS[group]]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout)
        failed = proc.returncode != 0
    except subprocess.TimeoutExpired:
        failed = True  # a mutant that hangs the tests is detected
    return failed, time.perf_counter() - t0


def main(argv: list[str]) -> int:
    if "--list" in argv:
        for name, file, *_ in MUTANTS:
            print(f"{name:28s} {file}")
        return 0
    prefixes = [a for a in argv if not a.startswith("-")]
    chosen = [m for m in MUTANTS if not prefixes or any(m[0].startswith(p) for p in prefixes)]
    killed = survived = equivalent = 0
    survivors = []
    for name, file, old, new, is_equivalent in chosen:
        path = ROOT / "rsnjax" / file
        source = path.read_text()
        if source.count(old) != 1:
            print(f"{name:28s} SNIPPET NOT FOUND ONCE ({source.count(old)}×) in {file}")
            return 2
        try:
            path.write_text(source.replace(old, new))
            dead, seconds = _run_tests(file.removesuffix(".py"), timeout=300)
        finally:
            path.write_text(source)
        status = "killed" if dead else ("survived (equivalent)" if is_equivalent else "SURVIVED")
        print(f"{name:28s} {status:22s} {seconds:5.1f} s", flush=True)
        if is_equivalent and not dead:
            equivalent += 1
        elif dead:
            killed += 1
        else:
            survived += 1
            survivors.append(name)
    total = killed + survived
    rate = killed / total if total else float("nan")
    print(f"\n{killed} of {total} non-equivalent mutants killed ({100 * rate:.0f} %); "
          f"{equivalent} equivalent survived" + (f"; survivors: {', '.join(survivors)}" if survivors else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
