"""The extent of a model's training data, and the test for chains that leave it.

DSM teaches a score network nothing where the (blurred) data have no mass, so a sample far outside
the training data is a sample of the network's extrapolation, not of the data. `fit` records the
data's extent on the model it returns (``model.extent``); `sample` and the reservoir carry it and
count the chains whose final readout lies outside it (`SampleResult.escaped`).

The extent is an ellipsoid in the data's own metric: with the data's mean μ and covariance
C = L Lᵀ, the *whitened radius* of x is ρ(x) = ‖L⁻¹(x − μ)‖. ``radius`` is the largest whitened
radius of the training points (of 10 000 fresh draws for a target). A chain has *escaped* when
ρ(x) > ``escape_factor · radius`` (default 2: twice as far out as any training point; a
Laplace tail with 20 000 training points reaches beyond that with probability ≈ 10⁻⁹).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["DataExtent", "data_extent", "with_extent", "DEFAULT_ESCAPE_FACTOR"]

#: A chain counts as escaped beyond this many times the training data's largest whitened radius.
DEFAULT_ESCAPE_FACTOR = 2.0


@dataclasses.dataclass(frozen=True)
class DataExtent:
    """Where the training data lie: an ellipsoid ρ(x) ≤ radius (see the module docstring).

    Hashable and immutable (it is a static field of the models). Fields: ``mean`` (d floats),
    ``whitening`` (d×d floats, row-major: L⁻¹ with C = L Lᵀ), ``radius`` (largest whitened radius
    of the data), ``num_points`` (how many points it was measured on).
    """

    mean: tuple
    whitening: tuple
    radius: float
    num_points: int

    @property
    def dim(self) -> int:
        return len(self.mean)

    def whitened_radius(self, x) -> np.ndarray:
        """ρ(x) = ‖L⁻¹(x − μ)‖ for ``x`` of shape ``(..., d)``; returns a NumPy array ``(...)``."""
        whitening = np.asarray(self.whitening).reshape(self.dim, self.dim)
        return np.linalg.norm((np.asarray(x, np.float64) - np.asarray(self.mean)) @ whitening.T, axis=-1)

    def outside(self, x, escape_factor: float = DEFAULT_ESCAPE_FACTOR) -> np.ndarray:
        """``(...)`` bool: True where x is non-finite or ρ(x) > escape_factor · radius."""
        rho = self.whitened_radius(x)
        return ~np.isfinite(rho) | (rho > escape_factor * self.radius)

    def to_json(self) -> dict:
        return {"mean": list(self.mean), "whitening": list(self.whitening), "radius": self.radius,
                "num_points": self.num_points}

    @classmethod
    def from_json(cls, obj) -> "DataExtent":
        """Inverse of `to_json`; raises ValueError for anything malformed."""
        try:
            mean = tuple(float(v) for v in obj["mean"])
            whitening = tuple(float(v) for v in obj["whitening"])
            radius = float(obj["radius"])
            num_points = int(obj["num_points"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed data extent: {err}") from None
        d = len(mean)
        if d < 1 or len(whitening) != d * d or not math.isfinite(radius) or radius <= 0 \
                or not all(map(math.isfinite, mean + whitening)):
            raise ValueError("malformed data extent: inconsistent sizes or non-finite values")
        return cls(mean, whitening, radius, num_points)


def data_extent(points) -> DataExtent:
    """Measure the extent of ``points`` ``(num, d)`` (at least 2 rows, finite).

    The covariance is regularised by 10⁻⁶ of its trace so that data on a lower-dimensional set
    (a line in 2-D) still have a whitening; such data then have a very thin ellipsoid, as they should.
    """
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"`points` must be a finite (num >= 2, d) array, got shape {x.shape}")
    mean = x.mean(axis=0)
    cov = np.atleast_2d(np.cov(x, rowvar=False))
    cov = cov + 1e-6 * max(np.trace(cov) / cov.shape[0], 1e-300) * np.eye(cov.shape[0])
    chol = np.linalg.cholesky(cov)
    whitening = np.linalg.inv(chol)
    radius = float(np.max(np.linalg.norm((x - mean) @ whitening.T, axis=1)))
    return DataExtent(tuple(map(float, mean)), tuple(map(float, whitening.ravel())),
                      max(radius, 1e-12), int(x.shape[0]))


def with_extent(model, extent: DataExtent | None):
    """A copy of ``model`` (a `ScoreNetwork`, `SamplerOnly` or `ReservoirSampler`) whose
    ``extent`` is ``extent``. The weights are shared, not copied."""
    if not hasattr(model, "extent"):
        raise TypeError(f"{type(model).__name__} does not record a data extent")
    if extent is not None and not isinstance(extent, DataExtent):
        raise TypeError(f"`extent` must be a DataExtent or None, got {type(extent).__name__}")
    if extent is not None and extent.dim != model.dim:
        raise ValueError(f"`extent` has dimension {extent.dim}, the model {model.dim}")
    new = object.__new__(type(model))
    for field in dataclasses.fields(model):
        object.__setattr__(new, field.name, getattr(model, field.name))
    object.__setattr__(new, "extent", extent)
    return new
