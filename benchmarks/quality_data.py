"""The data sets of `benchmarks/quality.py`: three analytic targets and ten data-only sets.

Every set is a function ``(rng, num) -> (num, d)`` float64 array, so that the benchmark can draw
independent training, reference and null sets of any size. Sizes and scales are those of the
classic 2-D density-estimation examples (data within a few units of the origin).
"""

from __future__ import annotations

import numpy as np
from sklearn import datasets as skd  # S-curve and swiss roll (random positions)


def _seed(rng) -> int:
    return int(rng.integers(2**31 - 1))


# (scikit-learn's make_moons / make_circles place points on an evenly spaced grid of angles, so
# two of their draws are not independent samples; these draw the angles at random.)
def moons(rng, num):
    t = rng.uniform(0, np.pi, num)
    upper = rng.integers(0, 2, num).astype(bool)
    x = np.where(upper[:, None], np.stack([np.cos(t), np.sin(t)], 1),
                 np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1))
    return (x + 0.06 * rng.normal(size=(num, 2)) - [0.5, 0.25]) * 2.0


def circles(rng, num):
    t = rng.uniform(0, 2 * np.pi, num)
    radius = np.where(rng.integers(0, 2, num) == 1, 1.0, 0.5)[:, None]
    return 3.0 * (radius * np.stack([np.cos(t), np.sin(t)], 1) + 0.04 * rng.normal(size=(num, 2)))


def s_curve(rng, num):  # 3-D, curved, thin (make_s_curve draws its positions at random)
    x, _ = skd.make_s_curve(num, noise=0.05, random_state=_seed(rng))
    return x


def swiss_roll(rng, num):  # 2-D, curved, thin (make_swiss_roll draws its positions at random)
    x, _ = skd.make_swiss_roll(num, noise=0.3, random_state=_seed(rng))
    return x[:, [0, 2]] / 4.0


def checkerboard(rng, num):  # 8 squares of side 1 in [-2, 2]²: sharp edges, multimodal
    x1 = rng.uniform(-2, 2, num)
    x2 = rng.uniform(0, 1, num) + rng.integers(0, 2, num) * 2 - 2 + (np.floor(x1) % 2)
    return np.stack([x1, x2], 1)


def anisotropic_blobs(rng, num):  # three sheared blobs of different widths (random counts)
    centers = np.array([[-2.0, 1.0], [2.0, 0.0], [0.0, -2.0]])
    k = rng.integers(0, 3, num)
    x = centers[k] + np.array([0.3, 0.6, 0.2])[k, None] * rng.normal(size=(num, 2))
    return x @ np.array([[0.8, -0.5], [0.4, 0.9]])


def pinwheel(rng, num, arms=5, radial_std=0.3, tangential_std=0.08, rate=0.25):
    labels = rng.integers(0, arms, num)
    feats = rng.normal(size=(num, 2)) * [radial_std, tangential_std] + [1.0, 0.0]
    angles = 2 * np.pi * labels / arms + rate * np.exp(feats[:, 0])
    rot = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)], -1).reshape(-1, 2, 2)
    return 2.0 * np.einsum("ti,tij->tj", feats, rot)


def student_t(rng, num, df=3.0):  # heavy-tailed and correlated (infinite kurtosis at df = 3)
    z = rng.normal(size=(num, 2)) @ np.linalg.cholesky([[1.0, 0.6], [0.6, 1.0]]).T
    return z / np.sqrt(rng.chisquare(df, (num, 1)) / df)


def thin_line(rng, num):  # a rotated Gaussian 25× longer than wide
    z = rng.normal(size=(num, 2)) * [1.5, 0.06]
    c, s = np.cos(0.5), np.sin(0.5)
    return z @ np.array([[c, s], [-s, c]])


def gaussians_3d(rng, num):  # four 3-D Gaussians at the corners of a tetrahedron, unequal weights
    centers = 1.6 * np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float)
    k = rng.choice(4, num, p=[0.4, 0.3, 0.2, 0.1])
    return centers[k] + 0.35 * rng.normal(size=(num, 3))


def _from_target(make):
    def draw(rng, num):
        import jax

        return np.asarray(make().sample(jax.random.key(_seed(rng)), num), np.float64)

    return draw


def _targets():
    from rsnjax import targets

    return {
        "double_peak": _from_target(targets.double_peak),
        "ring_of_8": _from_target(targets.ring_of_gaussians),
        "laplace_x": _from_target(targets.laplace_x),
    }


#: name -> (draw, kind)
def all_sets() -> dict:
    sets = {name: (draw, "target") for name, draw in _targets().items()}
    for draw in (moons, circles, s_curve, swiss_roll, checkerboard, anisotropic_blobs, pinwheel,
                 student_t, thin_line, gaussians_3d):
        sets[draw.__name__] = (draw, "data")
    return sets
