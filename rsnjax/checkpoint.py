"""Save and load rsnjax models with their hyperparameters, in one self-describing file.

File layout (all integers little-endian)::

    b"RSNJAX-CHECKPOINT\\n"                magic line
    uint64  header length H
    H bytes JSON header: format version, rsnjax version, model class and hyperparameters,
            dtype, payload length and SHA-256, user metadata
    payload: equinox ``tree_serialise_leaves`` of ``(model, extra)``

Files are written atomically (a temporary file in the same directory, flushed and fsynced, then
renamed over the target), so a crash mid-write never leaves a truncated file where a good one was.
Loading checks the magic, the header, the payload length and its hash, and says which file is
wrong and how.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["save", "load", "load_with_extra", "CheckpointError", "model_spec", "model_from_spec"]

MAGIC = b"RSNJAX-CHECKPOINT\n"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or does not match what was asked for."""


def _version() -> str:
    from . import __version__

    return __version__


def model_spec(model: Any) -> dict:
    """The class name and hyperparameters that rebuild ``model``'s structure (not its weights)."""
    from .networks import SamplerOnly, ScoreNetwork
    from .reservoir import ReservoirSampler

    if isinstance(model, ScoreNetwork):
        return {"class": "ScoreNetwork", "dim": model.dim, "hidden": model.hidden,
                "activation": model.activation}
    if isinstance(model, SamplerOnly):
        return {"class": "SamplerOnly", "dim": model.dim, "dynamics": model.dynamics,
                "activation": model.activation}
    if isinstance(model, ReservoirSampler):
        return {"class": "ReservoirSampler", "dim": model.dim, "hidden": model.hidden,
                "activation": model.activation, "tau": model.tau}
    raise TypeError(
        f"`model` must be a ScoreNetwork, SamplerOnly or ReservoirSampler, got {type(model).__name__}"
    )


def model_from_spec(spec: dict, dtype) -> Any:
    """A model with the structure ``spec`` describes and placeholder weights of ``dtype``."""
    from .networks import SamplerOnly, ScoreNetwork
    from .reservoir import ReservoirSampler

    key = jax.random.key(0)
    cls = spec.get("class")
    if cls == "ScoreNetwork":
        model = ScoreNetwork(spec["dim"], spec["hidden"], activation=spec["activation"], key=key)
    elif cls == "SamplerOnly":
        model = SamplerOnly(spec["dim"], dynamics=spec["dynamics"], activation=spec["activation"],
                            key=key)
    elif cls == "ReservoirSampler":
        model = ReservoirSampler.placeholder(spec["dim"], spec["hidden"],
                                             activation=spec["activation"], tau=spec["tau"])
    else:
        raise ValueError(f"unknown model class {cls!r}")
    return jax.tree_util.tree_map(
        lambda leaf: leaf.astype(dtype) if eqx.is_inexact_array(leaf) else leaf, model
    )


def _model_dtype(model) -> str:
    leaves = [x for x in jax.tree_util.tree_leaves(model) if eqx.is_inexact_array(x)]
    return str(leaves[0].dtype) if leaves else str(jnp.result_type(float))


def save(path: str | os.PathLike, model: Any, *, extra: Any = None, metadata: dict | None = None) -> Path:
    """Write ``model`` (and an optional pytree ``extra``, e.g. an optimiser state) to ``path``.

    **Arguments:**

    - `path`: the file to write; its directory is created. Replaced atomically if it exists.
    - `model`: a `ScoreNetwork`, `SamplerOnly` or `ReservoirSampler`.
    - `extra`: any pytree of arrays to store beside the model; loading it needs a template
      (see `load_with_extra`).
    - `metadata`: a JSON-serialisable dict stored in the header.

    **Returns:** the path written.
    """
    path = Path(path)
    spec = model_spec(model)
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, (model, extra))
    payload = buffer.getvalue()
    header = {
        "format": FORMAT_VERSION,
        "rsnjax_version": _version(),
        "jax_version": jax.__version__,
        "model": spec,
        "dtype": _model_dtype(model),
        "has_extra": extra is not None,
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "metadata": metadata or {},
    }
    try:
        header_bytes = json.dumps(header, sort_keys=True).encode()
    except TypeError as err:
        raise TypeError(f"`metadata` must be JSON-serialisable: {err}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<Q", len(header_bytes)))
            f.write(header_bytes)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_header(path: str | os.PathLike) -> tuple[dict, bytes]:
    """The checked JSON header and the payload bytes of the checkpoint at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{str(path)!r} is not an rsnjax checkpoint (bad magic bytes)")
    offset = len(MAGIC)
    if len(data) < offset + 8:
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated (no header length)")
    (header_len,) = struct.unpack("<Q", data[offset : offset + 8])
    offset += 8
    if len(data) < offset + header_len:
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated inside its header")
    try:
        header = json.loads(data[offset : offset + header_len])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} has a corrupt header: {err}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {header.get('format') if isinstance(header, dict) else '?'}; "
            f"this rsnjax reads format {FORMAT_VERSION}"
        )
    payload = data[offset + header_len :]
    if len(payload) != header["payload_bytes"]:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or padded: payload has {len(payload)} bytes, "
            f"header says {header['payload_bytes']}"
        )
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: payload checksum mismatch")
    return header, payload


def load_with_extra(path: str | os.PathLike, extra_like: Any = None) -> tuple[Any, Any, dict]:
    """Load a model, its extra pytree and the header's metadata.

    **Arguments:**

    - `path`: the checkpoint file.
    - `extra_like`: a pytree with the structure of the stored ``extra`` (e.g. ``optimizer.init``
      of the model's parameters); ``None`` skips it.

    **Returns:** ``(model, extra, header)``; ``extra`` is ``None`` when not requested or not stored.
    """
    header, payload = read_header(path)
    try:
        template_model = model_from_spec(header["model"], jnp.dtype(header["dtype"]))
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} describes an unusable model: {err}") from None
    stored_extra = header.get("has_extra", False)
    if extra_like is not None and not stored_extra:
        raise CheckpointError(f"checkpoint {str(path)!r} holds no extra state (e.g. optimiser state)")
    template = (template_model, extra_like if stored_extra else None)
    try:
        if stored_extra and extra_like is None:
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds extra state: pass `extra_like` to load it, "
                "or use `load` for the model alone"
            )
        model, extra = eqx.tree_deserialise_leaves(io.BytesIO(payload), template)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - equinox raises several types on mismatch
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match the expected structure: {err}"
        ) from None
    return model, extra, header


def load(path: str | os.PathLike) -> Any:
    """Load the model stored at ``path`` (any extra state is skipped)."""
    header, payload = read_header(path)
    if not header.get("has_extra", False):
        return load_with_extra(path)[0]
    # Deserialise the model's leaves only: they come first in the payload.
    template_model = model_from_spec(header["model"], jnp.dtype(header["dtype"]))
    try:
        return eqx.tree_deserialise_leaves(io.BytesIO(payload), template_model)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {str(path)!r} does not match its model: {err}") from None
