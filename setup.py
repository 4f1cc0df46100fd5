"""Build rsnjax's optional C++ kernels (called through ``jax.ffi``): the fused reservoir step
(rsnjax/_kernels/reservoir.cc, used by `rsnjax.sample`) and a `ScoreNetwork`'s DSM forward and
backward passes (rsnjax/_kernels/dsm.cc, used by `rsnjax.fit`).

Everything else is configured in pyproject.toml. The kernels are optional: when they cannot be
built (no C++ compiler, ``RSNJAX_BUILD_KERNEL=0``) the install goes on without them and rsnjax
uses XLA. They are compiled for the machine that builds them (``-O3 -march=native``); set
``RSNJAX_KERNEL_CFLAGS`` to other flags (e.g. ``"-O3 -mavx2 -mfma"`` for a wheel that runs on
other machines). The XLA FFI headers are vendored (rsnjax/_kernels/include), so jaxlib is not
needed at build time.
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


HEADERS = ["rsnjax/_kernels/include/xla/ffi/api/api.h", "rsnjax/_kernels/include/xla/ffi/api/c_api.h",
           "rsnjax/_kernels/include/xla/ffi/api/ffi.h", "rsnjax/_kernels/simd.h"]
flags = shlex.split(os.environ.get("RSNJAX_KERNEL_CFLAGS", "-O3 -march=native"))
ext_modules = []
if os.environ.get("RSNJAX_BUILD_KERNEL", "1") != "0":
    for name, source in (("_reservoir", "reservoir.cc"), ("_dsm", "dsm.cc")):
        ext_modules.append(Extension(
            f"rsnjax._kernels.{name}",
            sources=[f"rsnjax/_kernels/{source}"],
            include_dirs=["rsnjax/_kernels/include"],
            depends=HEADERS,
            language="c++",
            extra_compile_args=["-std=c++17", "-fno-math-errno", *flags],
            optional=True,
        ))

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
