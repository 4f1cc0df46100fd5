"""Finding, loading and registering one of rsnjax's optional C++ kernel libraries (the shared
part of `rsnjax._kernels` and `rsnjax._dsm_kernel`)."""

from __future__ import annotations

import ctypes
import glob
import os
from pathlib import Path
from typing import Callable

import jax


def switched_on() -> bool:
    """False when the environment variable ``RSNJAX_KERNEL`` is ``0`` (every C++ kernel off)."""
    return os.environ.get("RSNJAX_KERNEL", "1").strip() != "0"


class KernelLibrary:
    """The library ``rsnjax/_kernels/<stem>*.so`` built by setup.py, loaded on first use.

    ``targets`` maps the XLA FFI target names to register (platform ``cpu``) to the library's
    handler symbols; ``configure(lib)`` sets the ctypes signatures of its plain C entry points.
    A library that is missing or does not load leaves `load` returning None and `error` saying why.
    """

    def __init__(self, stem: str, what: str, targets: dict[str, str],
                 configure: Callable[[ctypes.CDLL], None] | None = None):
        self.stem, self.what, self.targets, self.configure = stem, what, targets, configure
        self.error: str | None = None
        self._lib: ctypes.CDLL | None = None
        self._loaded = False

    def _path(self) -> Path | None:
        here = Path(__file__).resolve().parent
        found = sorted(glob.glob(str(here / f"{self.stem}*.so")) + glob.glob(str(here / f"{self.stem}*.pyd")))
        return Path(found[0]) if found else None

    def load(self) -> ctypes.CDLL | None:
        """The loaded library (its targets registered), or None."""
        if self._loaded:
            return self._lib
        self._loaded = True
        path = self._path()
        if path is None:
            self.error = (f"the {self.what} was not built (no rsnjax/_kernels/{self.stem}*.so; reinstall "
                          "rsnjax with a C++ compiler)")
            return None
        try:
            lib = ctypes.CDLL(str(path))
            for target, symbol in self.targets.items():
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
            if self.configure is not None:
                self.configure(lib)
        except (OSError, AttributeError) as err:  # a library built for another CPU or JAX
            self.error = f"the {self.what} {path.name} did not load: {err}"
            return None
        self._lib = lib
        return lib

    def available(self) -> bool:
        """Whether the library is built and loaded."""
        return self.load() is not None

    def unavailable_reason(self) -> str | None:
        """Why `available` is False (None when it is True)."""
        self.load()
        return self.error

    def enabled(self) -> bool:
        """`available` and not switched off by ``RSNJAX_KERNEL=0``."""
        return switched_on() and self.available()

    def require(self) -> ctypes.CDLL:
        """The loaded library; RuntimeError (saying why) when it is not there."""
        lib = self.load()
        if lib is None:
            raise RuntimeError(self.error)
        return lib
