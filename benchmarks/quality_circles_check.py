"""Is circles' seed-0 failure in `quality.py` the model or the evaluation? (docs/QUALITY.md)

Trains circles seed 0 as `quality.py` does, with 20 000 and with 160 000 steps at σ_min, and
evaluates each model from four start sets (the suite's own, then three fresh ones, each with its
own sampling key) against the suite's reference set; prints the null floor from 64 repeats
(the suite uses 8) and each MMD² divided by it.

    python benchmarks/quality_circles_check.py     # ≈ 1.5 min on one core
"""
import sys, numpy as np, jax, rsnjax
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_data import circles
from rsnjax import metrics
seed = 0
rng = np.random.default_rng(seed)
train = circles(rng, 20000); start0 = circles(rng, 2000); ref = circles(rng, 2000)
bw = float(np.median(np.linalg.norm(ref[:1000, None] - ref[None, :1000], axis=-1)))
mmd = lambda a, b: float(metrics.mmd(np.asarray(a, np.float32), np.asarray(b, np.float32), bandwidth=bw))
r2 = np.random.default_rng(123)
nulls = [mmd(circles(r2, 2000), circles(r2, 2000)) for _ in range(64)]
floor64 = np.mean(nulls) + 2 * np.std(nulls, ddof=1)
print(f"floor over 64 repeats {floor64:.2e} (quality.py's 8-repeat floor for seed 0: 1.6e-04)")
levels = len(rsnjax.default_sigmas(train.astype(np.float32)))
for final in (20000, 160000):
    net, h = rsnjax.fit(rsnjax.ScoreNetwork(2, 1000, key=jax.random.key(seed)), train.astype(np.float32),
                        key=jax.random.key(seed + 1), progress=False, steps_per_level=[1000]*(levels-1)+[final])
    res = rsnjax.ReservoirSampler.from_score_network(net)
    dt = min(1e-3, rsnjax.stable_step_size(res, train)); n = int(round(5/dt)); se = n//10; n = se*10
    vals = []
    for k in range(4):
        start = start0 if k == 0 else circles(np.random.default_rng(1000 + k), 2000)
        r0 = np.asarray(start) @ np.asarray(res.noise_map, np.float64).T / np.sqrt(2.0)
        out = rsnjax.sample(res, key=jax.random.key(seed + 2 + 10 * k), num_chains=2000, num_steps=n, step_size=dt,
                            initial_state=r0.astype(np.float32), save_every=se, on_nonfinite="flag", warn=False)
        x = np.asarray(out.samples, np.float64)
        vals.append(mmd(x, ref))
    print(final, "MMD² over 4 start sets/keys:", " ".join(f"{v:.2e}" for v in vals),
          "| / floor64:", " ".join(f"{v/floor64:.2f}" for v in vals))
