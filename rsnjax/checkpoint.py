"""Save and load rsnjax models with their hyperparameters, in one self-describing file.

File layout (all integers little-endian)::

    b"RSNJAX-CHECKPOINT\\n"                magic line
    uint64  header length H
    H bytes JSON header: format version, rsnjax and JAX versions, model class and
            hyperparameters, dtype, payload length and SHA-256, user metadata
    32 bytes SHA-256 of everything above (magic, length and header)
    payload: equinox ``tree_serialise_leaves`` of ``(model, extra)``

Every byte of the file is covered by a checksum: the header digest covers the header (which
holds the payload's digest), so a flipped byte anywhere, a truncated file or a file of another
kind is reported with the file's name and what is wrong with it.

Files are written atomically (a temporary file in the same directory, flushed and fsynced, then
renamed over the target), so a crash mid-write never leaves a truncated file where a good one was.
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

from .extent import DataExtent, with_extent

__all__ = [
    "save",
    "load",
    "load_with_extra",
    "read_info",
    "CheckpointError",
    "model_spec",
    "model_from_spec",
    "atomic_write_bytes",
    "write_checked",
]

MAGIC = b"RSNJAX-CHECKPOINT\n"
FORMAT_VERSION = 2
_DIGEST_BYTES = 32
#: A header larger than this is certainly a corrupt length field.
_MAX_HEADER_BYTES = 1 << 26


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or does not match what was asked for.

    The message names the file and says what is wrong with it.
    """


def _version() -> str:
    from . import __version__

    return __version__


def model_spec(model: Any) -> dict:
    """The class name and hyperparameters that rebuild ``model``'s structure (not its weights).

    **Arguments:**

    - `model`: a `ScoreNetwork`, `SamplerOnly`, `ReservoirSampler`, `ConditionalScoreNetwork`
      or `ConditionalSamplerOnly`.

    **Returns:** a JSON-serialisable dict with ``"class"`` and the constructor's hyperparameters.

    **Raises:** `TypeError` for any other object.
    """
    from .conditional import ConditionalSamplerOnly, ConditionalScoreNetwork
    from .networks import SamplerOnly, ScoreNetwork
    from .reservoir import ReservoirSampler

    if isinstance(model, ConditionalScoreNetwork):
        return {"class": "ConditionalScoreNetwork", "dim": model.dim, "cond_dim": model.cond_dim,
                "hidden": model.hidden, "activation": model.activation}
    if isinstance(model, ConditionalSamplerOnly):
        return {"class": "ConditionalSamplerOnly", "dim": model.dim, "cond_dim": model.cond_dim,
                "dynamics": model.dynamics, "activation": model.activation}
    if isinstance(model, ReservoirSampler) and model.cond_dim is not None:
        return {"class": "ReservoirSampler", "dim": model.dim, "hidden": model.hidden,
                "activation": model.activation, "tau": model.tau, "cond_dim": model.cond_dim}
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
        "`model` must be a ScoreNetwork, SamplerOnly, ReservoirSampler, ConditionalScoreNetwork or "
        f"ConditionalSamplerOnly, got {type(model).__name__}"
    )


def model_from_spec(spec: dict, dtype) -> Any:
    """A model with the structure ``spec`` describes and placeholder weights of ``dtype``.

    **Arguments:**

    - `spec`: a dict as returned by `model_spec`.
    - `dtype`: the floating dtype of the placeholder weights.

    **Returns:** a model to be used as a template for `equinox.tree_deserialise_leaves`.
    """
    from .conditional import ConditionalSamplerOnly, ConditionalScoreNetwork
    from .networks import SamplerOnly, ScoreNetwork
    from .reservoir import ReservoirSampler

    if not isinstance(spec, dict):
        raise TypeError(f"`spec` must be a dict, got {type(spec).__name__}")
    key = jax.random.key(0)
    cls = spec.get("class")
    if cls == "ScoreNetwork":
        model = ScoreNetwork(spec["dim"], spec["hidden"], activation=spec["activation"], key=key)
    elif cls == "SamplerOnly":
        model = SamplerOnly(spec["dim"], dynamics=spec["dynamics"], activation=spec["activation"],
                            key=key)
    elif cls == "ReservoirSampler":
        model = ReservoirSampler.placeholder(spec["dim"], spec["hidden"], activation=spec["activation"],
                                             tau=spec["tau"], cond_dim=spec.get("cond_dim"))
    elif cls == "ConditionalScoreNetwork":
        model = ConditionalScoreNetwork(spec["dim"], spec["cond_dim"], spec["hidden"],
                                        activation=spec["activation"], key=key)
    elif cls == "ConditionalSamplerOnly":
        model = ConditionalSamplerOnly(spec["dim"], spec["cond_dim"], dynamics=spec["dynamics"],
                                       activation=spec["activation"], key=key)
    else:
        raise ValueError(f"unknown model class {cls!r}")
    return jax.tree_util.tree_map(
        lambda leaf: leaf.astype(dtype) if eqx.is_inexact_array(leaf) else leaf, model
    )


def _model_dtype(model) -> str:
    leaves = [x for x in jax.tree_util.tree_leaves(model) if eqx.is_inexact_array(x)]
    return str(leaves[0].dtype) if leaves else str(jnp.result_type(float))


def _as_path(path: Any, name: str = "path") -> Path:
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be a str or os.PathLike, got {type(path).__name__}")
    if str(path) == "":
        raise ValueError(f"`{name}` must not be empty")
    if "\x00" in str(path):
        raise ValueError(f"`{name}` must not contain a NUL character, got {str(path)!r}")
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same directory, flushed and
    fsynced, then renamed over ``path``. Readers see the old file or the new one, never a part.

    **Arguments:**

    - `path`: the file to write; its directory is created.
    - `data`: the bytes.

    **Returns:** the path written.
    """
    path = _as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable (best effort; not possible on every platform)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def save(path: str | os.PathLike, model: Any, *, extra: Any = None, metadata: dict | None = None) -> Path:
    """Write ``model`` (and an optional pytree ``extra``, e.g. an optimiser state) to ``path``.

    **Arguments:**

    - `path`: the file to write; its directory is created. Replaced atomically if it exists.
    - `model`: a `ScoreNetwork`, `SamplerOnly` or `ReservoirSampler`.
    - `extra`: any pytree of arrays to store beside the model; loading it needs a template
      (see `load_with_extra`).
    - `metadata`: a JSON-serialisable dict stored in the header.

    **Returns:** the path written.

    **Raises:** `TypeError` for an unsupported model, a non-dict or non-JSON `metadata`, or a bad
    `path`.
    """
    path = _as_path(path)
    spec = model_spec(model)
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"`metadata` must be a dict, got {type(metadata).__name__}")
    buffer = io.BytesIO()
    try:
        eqx.tree_serialise_leaves(buffer, (model, extra))
    except Exception as err:  # noqa: BLE001 - numpy/equinox raise various types
        raise TypeError(f"`extra` must be a pytree of arrays and numbers: {err}") from None
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
    extent = getattr(model, "extent", None)
    if extent is not None:  # the training data's extent (see rsnjax.extent); restored by `load`
        header["extent"] = extent.to_json()
    try:
        header_bytes = json.dumps(header, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        raise TypeError(f"`metadata` must be JSON-serialisable (no NaN/inf): {err}") from None
    return _write_file(path, header_bytes, payload)


def _write_file(path: Path, header_bytes: bytes, payload: bytes) -> Path:
    head = MAGIC + struct.pack("<Q", len(header_bytes)) + header_bytes
    return atomic_write_bytes(path, head + hashlib.sha256(head).digest() + payload)


def write_checked(path: str | os.PathLike, header: dict, payload: bytes) -> Path:
    """Write ``payload`` bytes under a JSON ``header`` in the checkpoint format (magic line,
    header, SHA-256 digests of both, atomic replace), for other kinds of state than a model
    (e.g. `sample`'s resumable chains); `read_header` reads and verifies it back.

    **Arguments:**

    - `path`: the file to write; its directory is created.
    - `header`: a JSON-serialisable dict; ``format``, ``payload_bytes`` and ``payload_sha256``
      are set here.
    - `payload`: the bytes.

    **Returns:** the path written.
    """
    path = _as_path(path)
    header = {**header, "format": FORMAT_VERSION, "rsnjax_version": _version(),
              "payload_bytes": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest()}
    header_bytes = json.dumps(header, sort_keys=True, allow_nan=False).encode()
    return _write_file(path, header_bytes, payload)


def read_header(path: str | os.PathLike) -> tuple[dict, bytes]:
    """The checked JSON header and the payload bytes of the checkpoint at ``path``.

    **Raises:** `CheckpointError` naming the file when it is missing, unreadable, not a
    checkpoint, of another format version, truncated, or corrupt.
    """
    path = _as_path(path)
    name = repr(str(path))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {name} does not exist or is not a file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"checkpoint {name} cannot be read: {err.strerror or err}") from None
    if not data.startswith(MAGIC):
        if len(data) < len(MAGIC) and MAGIC.startswith(data):
            raise CheckpointError(f"checkpoint {name} is truncated ({len(data)} bytes, inside the magic line)")
        raise CheckpointError(f"{name} is not an rsnjax checkpoint (bad magic bytes)")
    offset = len(MAGIC)
    if len(data) < offset + 8:
        raise CheckpointError(f"checkpoint {name} is truncated ({len(data)} bytes, no header length)")
    (header_len,) = struct.unpack("<Q", data[offset : offset + 8])
    offset += 8
    if header_len > _MAX_HEADER_BYTES:
        raise CheckpointError(f"checkpoint {name} is corrupt: header length field says {header_len} bytes")
    if len(data) < offset + header_len + _DIGEST_BYTES:
        raise CheckpointError(
            f"checkpoint {name} is truncated inside its header ({len(data)} bytes, the header "
            f"alone needs {offset + header_len + _DIGEST_BYTES})")
    header_bytes = data[offset : offset + header_len]
    digest = data[offset + header_len : offset + header_len + _DIGEST_BYTES]
    if hashlib.sha256(data[: offset + header_len]).digest() != digest:
        # Say something useful about files of an older format before calling it corrupt.
        try:
            old = json.loads(header_bytes)
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        if isinstance(old, dict) and isinstance(old.get("format"), int) and old["format"] != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {name} has format {old['format']!r} (or a corrupt header); this rsnjax "
                f"({_version()}) reads format {FORMAT_VERSION}")
        raise CheckpointError(f"checkpoint {name} is corrupt: header checksum mismatch")
    try:
        header = json.loads(header_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {name} has a corrupt header: {err}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        got = header.get("format") if isinstance(header, dict) else "?"
        raise CheckpointError(
            f"checkpoint {name} has format {got!r}; this rsnjax ({_version()}) reads format {FORMAT_VERSION}")
    payload = data[offset + header_len + _DIGEST_BYTES :]
    expected = header.get("payload_bytes")
    if len(payload) != expected:
        what = "truncated" if isinstance(expected, int) and len(payload) < expected else "padded"
        raise CheckpointError(
            f"checkpoint {name} is {what}: its payload has {len(payload)} bytes, the header says {expected}")
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise CheckpointError(f"checkpoint {name} is corrupt: payload checksum mismatch")
    return header, payload


def read_info(path: str | os.PathLike) -> dict:
    """The header of the checkpoint at ``path`` (verified, weights not loaded).

    **Returns:** a dict with ``"model"`` (class and hyperparameters), ``"dtype"``,
    ``"rsnjax_version"``, ``"jax_version"``, ``"has_extra"`` and the user ``"metadata"``.
    """
    return read_header(path)[0]


def _template(header: dict, path: Path) -> Any:
    try:
        return model_from_spec(header["model"], jnp.dtype(header["dtype"]))
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} describes an unusable model: {err}") from None


def load_with_extra(path: str | os.PathLike, extra_like: Any = None) -> tuple[Any, Any, dict]:
    """Load a model, its extra pytree and the header.

    **Arguments:**

    - `path`: the checkpoint file.
    - `extra_like`: a pytree with the structure of the stored ``extra`` (e.g. ``optimizer.init``
      of the model's parameters); ``None`` skips it.

    **Returns:** ``(model, extra, header)``; ``extra`` is ``None`` when not requested.

    **Raises:** `CheckpointError` naming the file when it is unreadable or corrupt, holds no
    extra state although `extra_like` was given, or its extra state does not match `extra_like`.
    """
    path = _as_path(path)
    header, payload = read_header(path)
    template_model = _template(header, path)
    stored_extra = header.get("has_extra", False)
    if extra_like is not None and not stored_extra:
        raise CheckpointError(f"checkpoint {str(path)!r} holds no extra state (e.g. optimiser state)")
    try:
        if extra_like is None:
            # The model's leaves come first in the payload; the rest is not read.
            model, extra = eqx.tree_deserialise_leaves(io.BytesIO(payload), template_model), None
        else:
            model, extra = eqx.tree_deserialise_leaves(io.BytesIO(payload), (template_model, extra_like))
    except Exception as err:  # noqa: BLE001 - equinox raises several types on mismatch
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match the expected structure: {err}"
        ) from None
    if "extent" in header:
        try:
            model = with_extent(model, DataExtent.from_json(header["extent"]))
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint {str(path)!r} has a bad data extent: {err}") from None
    return model, extra, header


def load(path: str | os.PathLike) -> Any:
    """Load the model stored at ``path`` (any extra state is skipped).

    **Arguments:**

    - `path`: the checkpoint file written by `save`.

    **Returns:** the `ScoreNetwork`, `SamplerOnly` or `ReservoirSampler` stored there.

    **Raises:** `CheckpointError` naming the file when it is missing, truncated, corrupt, of
    another format, or does not hold the model its header describes.
    """
    return load_with_extra(path)[0]
