"""Build rsnjax's optional C++ kernel (the fused reservoir step, called through ``jax.ffi``).

Everything else is configured in pyproject.toml. The kernel is optional: when it cannot be built
(no C++ compiler, ``RSNJAX_BUILD_KERNEL=0``), the install goes on without it and `rsnjax.sample`
uses XLA's loop. It is compiled for the machine that builds it (``-O3 -march=native``); set
``RSNJAX_KERNEL_CFLAGS`` to other flags (e.g. ``"-O3 -mavx2 -mfma"`` for a wheel that runs on other
machines). The XLA FFI headers are vendored (rsnjax/_kernels/include), so jaxlib is not needed
at build time.
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
        except Exception as err:  # noqa: BLE001 - any failure: install without the kernel
            self._skip(err)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as err:  # noqa: BLE001
            self._skip(err)

    @staticmethod
    def _skip(err):
        print(f"rsnjax: the optional C++ kernel was not built ({err}); sample() will use XLA's loop",
              file=sys.stderr)


flags = shlex.split(os.environ.get("RSNJAX_KERNEL_CFLAGS", "-O3 -march=native"))
ext_modules = []
if os.environ.get("RSNJAX_BUILD_KERNEL", "1") != "0":
    ext_modules.append(Extension(
        "rsnjax._kernels._reservoir",
        sources=["rsnjax/_kernels/reservoir.cc"],
        include_dirs=["rsnjax/_kernels/include"],
        depends=["rsnjax/_kernels/include/xla/ffi/api/api.h", "rsnjax/_kernels/include/xla/ffi/api/c_api.h",
                 "rsnjax/_kernels/include/xla/ffi/api/ffi.h"],
        language="c++",
        extra_compile_args=["-std=c++17", "-fno-math-errno", *flags],
        optional=True,
    ))

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
