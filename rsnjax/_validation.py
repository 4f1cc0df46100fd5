"""Argument checks shared by the public API.

Every check raises at the API boundary with a message that names the argument and says what
was expected. Checks run on concrete values only: inside a ``jax.jit`` trace the value checks
(finiteness, positivity) are skipped, the shape checks still apply.
"""

from __future__ import annotations

import linecache
import math
import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def check_array(
    x: Any,
    name: str,
    *,
    ndim: int | tuple[int, ...] | None = None,
    dim: int | None = None,
    min_rows: int | None = None,
    finite: bool = True,
) -> jax.Array:
    """Convert ``x`` to a floating JAX array and check it.

    **Arguments:**

    - `x`: the value given by the user.
    - `name`: the argument's name, used in error messages.
    - `ndim`: the allowed number of dimensions (an int or a tuple of ints).
    - `dim`: the required size of the last axis.
    - `min_rows`: the minimum size of the first axis.
    - `finite`: whether NaN or infinite entries are an error.

    **Returns:** ``jnp.asarray(x)`` with a floating dtype.
    """
    if x is None:
        raise TypeError(f"`{name}` must be an array, got None")
    if isinstance(x, (str, bytes, dict, set)):
        raise TypeError(f"`{name}` must be a numeric array, got {type(x).__name__}")
    try:
        arr = jnp.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be a numeric array, got {type(x).__name__}: {err}") from None
    if arr.dtype == jnp.bool_ or not (
        jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)
    ):
        raise TypeError(f"`{name}` must hold real numbers, got dtype {arr.dtype}")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"`{name}` must have {want} dimensions, got shape {tuple(arr.shape)}")
    if dim is not None and (arr.ndim == 0 or arr.shape[-1] != dim):
        raise ValueError(
            f"`{name}` must have last axis of size {dim} (the model's dimension), "
            f"got shape {tuple(arr.shape)}"
        )
    if min_rows is not None and (arr.ndim == 0 or arr.shape[0] < min_rows):
        got = 0 if arr.ndim == 0 else arr.shape[0]
        raise ValueError(f"`{name}` needs at least {min_rows} rows, got {got}")
    if finite and not _is_tracer(arr) and arr.size and not bool(jnp.all(jnp.isfinite(arr))):
        bad = int(np.sum(~np.isfinite(np.asarray(arr))))
        raise ValueError(f"`{name}` contains {bad} NaN or infinite value(s)")
    return arr


def check_positive(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """Check that a scalar is a finite positive number and return it as a float."""
    if _is_tracer(value):
        return value
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be a number, got a bool")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a positive number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"`{name}` must be a finite {kind} number, got {value!r}")
    return v


def check_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """Check that ``value`` is an integer at least ``minimum`` and return it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value}")
    return int(value)


def check_key(key: Any, name: str = "key") -> jax.Array:
    """Check that ``key`` is a JAX PRNG key (new-style typed or legacy uint32[2])."""
    if key is None:
        raise TypeError(f"`{name}` is required: pass a PRNG key, e.g. jax.random.key(0)")
    if isinstance(key, jax.Array) or _is_tracer(key):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape != ():
                raise ValueError(f"`{name}` must be a single PRNG key, got shape {key.shape}")
            return key
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return key
    raise TypeError(
        f"`{name}` must be a PRNG key such as jax.random.key(0), got {type(key).__name__}"
        + (f" with shape {getattr(key, 'shape', None)}" if hasattr(key, "shape") else "")
    )


def raised_by_rsnjax(err: BaseException) -> bool:
    """Whether ``err`` comes from a ``raise`` statement of rsnjax itself (its input validation).

    A ValueError or TypeError raised anywhere else (inside JAX, NumPy, or by a wrong call in
    rsnjax's own code) is a bug, not bad input, and keeps its traceback. So is one that rsnjax
    only passes on: a bare ``raise`` or ``raise err`` of an exception object made elsewhere; the
    statement must create the exception (``raise ValueError(...)``, ``raise TypeError``).
    """
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    package = str(Path(__file__).resolve().parent)  # rsnjax/
    if not str(Path(filename).resolve()).startswith(package + os.sep):
        return False
    return _OWN_RAISE.match(linecache.getline(filename, tb.tb_lineno).strip()) is not None


# `raise` of a new exception: a class (capitalised, possibly dotted) called or not; not a bare
# `raise` and not `raise err` of an existing object
_OWN_RAISE = re.compile(r"raise\s+(?:[A-Za-z_]\w*\.)*[A-Z]\w*\s*(?:\(|from\b|$)")
