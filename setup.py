"""Build rsnjax's optional C++ kernels (called through ``jax.ffi``).

Everything else is configured in pyproject.toml. The kernels are optional: when they cannot be
built (no C++ compiler, ``RSNJAX_BUILD_KERNEL=0``) the install goes on without them and rsnjax
uses XLA. They are compiled for the machine that builds them (``-O3 -march=native``); set
``RSNJAX_KERNEL_CFLAGS`` to other flags (e.g. ``"-O3 -mavx2 -mfma"`` for a wheel that runs on
other machines).
"""

import os
import shlex
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install: a kernel that does not build is left out."""

    def run(self):
        try:
            super().run()
        except Exception as err:  # noqa: BLE001 - any failure: install without the kernels
            self._skip(err)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as err:  # noqa: BLE001
            self._skip(err)

    @staticmethod
    def _skip(err):
        print(f"rsnjax: an optional C++ kernel was not built ({err}); rsnjax will use XLA instead",
              file=sys.stderr)


def _ffi_include_dirs():
    """The XLA FFI headers: vendored under rsnjax/_kernels/include, else jaxlib's copy."""
    dirs = ["rsnjax/_kernels/include"]
    try:
        import jax.ffi

        dirs.append(jax.ffi.include_dir())
    except Exception:  # noqa: BLE001 - jax not importable at build time: the vendored copy only
        pass
    return dirs


flags = shlex.split(os.environ.get("RSNJAX_KERNEL_CFLAGS", "-O3 -march=native"))
ext_modules = []
if os.environ.get("RSNJAX_BUILD_KERNEL", "1") != "0":
    # the score network's forward/backward for the DSM training step (rsnjax/_dsm_kernel.py)
    ext_modules.append(Extension(
        "rsnjax._kernels._dsm",
        sources=["rsnjax/_kernels/dsm.cc"],
        include_dirs=_ffi_include_dirs(),
        language="c++",
        extra_compile_args=["-std=c++17", "-fno-math-errno", *flags],
        optional=True,
    ))

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
