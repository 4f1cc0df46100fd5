"""jaxtyping aliases shared by all modules."""

from __future__ import annotations

from typing import Callable

from jaxtyping import Array, Float, PRNGKeyArray

#: One point or a batch of points in the model's (output) space: shape ``(..., dim)``.
Points = Float[Array, "*batch dim"]
#: A set of samples: shape ``(num, dim)``.
Samples = Float[Array, "num dim"]
#: A saved trajectory: shape ``(num_saved, num_chains, dim)``.
Trajectory = Float[Array, "num_saved num_chains dim"]
#: A score function maps points to scores of the same shape.
ScoreFn = Callable[[Points], Points]

__all__ = ["Array", "Float", "PRNGKeyArray", "Points", "Samples", "Trajectory", "ScoreFn"]
