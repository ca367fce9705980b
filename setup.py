"""Build the optional C++/OpenMP extension ``mrfengine._ext``.

The extension is optional at install time: if it fails to compile, mrfengine
falls back to its pure-Python backends.  Set ``MRFENGINE_REQUIRE_EXT=1`` to make
a failed build an error (CI does).

The build is portable by default.  On x86-64 Linux, the numeric kernels
(``csrc/match.cpp``, ``separable.cpp``, ``mppca.cpp``, ``eigen_sym.cpp``) are
compiled three times, for the baseline (SSE2), x86-64-v3 (AVX2, FMA) and
x86-64-v4 (AVX-512), each into its own namespace (``csrc/isa.hpp``), and
``csrc/dispatch.cpp`` picks the best level the CPU runs when the extension is
imported (``MRFENGINE_ISA=baseline|avx2|avx512`` forces one); everything else
is baseline code, so a wheel runs on any x86-64 CPU.  Elsewhere (aarch64:
NEON is baseline) the kernels are built once for the target's baseline.
``MRFENGINE_TUNE=<cpu>`` tunes a portable build's scheduling for one CPU family
(``-mtune``; default ``generic``) without changing the instructions it uses.
``MRFENGINE_NATIVE=1`` builds everything once with ``-march=native`` instead
(fastest on the build machine, crashes with SIGILL on CPUs that lack its
instructions).  ``MRFENGINE_PORTABLE=1``, the old way to ask for a portable
build, is accepted and is now the default.
"""

from __future__ import annotations

import os
import platform
import re
import sys

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

BINDINGS = ["csrc/bindings.cpp", "csrc/bindings_matching.cpp", "csrc/dispatch.cpp"]
KERNELS = ["csrc/match.cpp", "csrc/separable.cpp", "csrc/mppca.cpp", "csrc/eigen_sym.cpp", "csrc/api/search.cpp",
           "csrc/kernel_table.cpp"]
# name: (csrc/isa.hpp's MRFENGINE_ISA_LEVEL, the level's flags on top of the baseline's), in link order: the
# baseline first, so the weak copies of standard templates that the levels share are baseline code.
X86_LEVELS = {
    "baseline": ("1", []),
    "avx2": ("3", ["-mavx2", "-mfma", "-mbmi", "-mbmi2"]),
    "avx512": ("4", ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx2", "-mfma", "-mbmi", "-mbmi2"]),
}


def _mode() -> str:
    """``native`` (MRFENGINE_NATIVE=1), ``dispatch`` (x86-64 Linux) or ``single`` (any other target)."""
    if os.environ.get("MRFENGINE_NATIVE", "0") == "1":
        return "native"
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if x86 and sys.platform.startswith("linux"):
        return "dispatch"
    if x86:
        print("NOTE: mrfengine._ext: run-time ISA dispatch is built on Linux only; building baseline x86-64 "
              "kernels (MRFENGINE_NATIVE=1 builds for this machine's CPU instead).", file=sys.stderr)
    return "single"


def _flags(mode: str) -> list[str]:
    if sys.platform == "win32":
        return []
    if mode == "native":
        return ["-march=native"]
    if mode == "dispatch":
        # Whatever CFLAGS say, the shared code is plain x86-64; the kernels'
        # levels add their flags (X86_LEVELS).  MRFENGINE_TUNE schedules the
        # code for one CPU family (e.g. znver3) without changing which
        # instructions it uses, so the build stays portable.
        tune = os.environ.get("MRFENGINE_TUNE", "generic")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", tune):
            raise ValueError(f"MRFENGINE_TUNE={tune!r} is not a GCC -mtune name (e.g. generic, znver3, icelake-server)")
        return ["-march=x86-64", f"-mtune={tune}"]
    return []


class OptionalBuildExt(build_ext):
    """Build the extension, tolerating failure unless MRFENGINE_REQUIRE_EXT=1.

    The kernels are compiled here, once per ISA level of the build's mode,
    into ``build_temp/isa-<level>/`` and linked into the one extension.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # compiler missing, OpenMP missing, ...
            self._fail(exc)

    def build_extension(self, ext) -> None:
        try:
            mode = _mode()
            ext.extra_compile_args = ext.extra_compile_args + _flags(mode)
            ext.define_macros = ext.define_macros + [("MRFENGINE_DISPATCH_X86", "1" if mode == "dispatch" else "0")]
            ext.extra_objects = self._kernel_objects(ext, mode)
            super().build_extension(ext)
        except Exception as exc:
            self._fail(exc)

    def _kernel_objects(self, ext, mode: str) -> list[str]:
        if mode == "dispatch":
            levels = [(name, level, flags) for name, (level, flags) in X86_LEVELS.items()]
        else:
            levels = [("native" if mode == "native" else "baseline", "0", [])]
        objects: list[str] = []
        for name, level, flags in levels:
            macros = [("MRFENGINE_ISA_LEVEL", level)]
            if mode == "native":
                macros.append(("MRFENGINE_NATIVE_BUILD", "1"))
            objects += self.compiler.compile(
                KERNELS,
                output_dir=os.path.join(self.build_temp, f"isa-{name}"),
                macros=macros,
                include_dirs=ext.include_dirs,
                debug=self.debug,
                extra_postargs=ext.extra_compile_args + flags,
                depends=ext.depends,
            )
        return objects

    @staticmethod
    def _fail(exc: Exception) -> None:
        if os.environ.get("MRFENGINE_REQUIRE_EXT", "0") == "1":
            raise
        print(f"WARNING: mrfengine._ext was not built ({exc}); using the Python backends.", file=sys.stderr)


ext_modules = [
    Pybind11Extension(
        "mrfengine._ext",
        sources=BINDINGS,
        include_dirs=["csrc"],
        depends=[os.path.join("csrc", f) for f in sorted(os.listdir("csrc")) if f.endswith(".hpp")]
        + ["csrc/api/search.hpp"],
        cxx_std=17,
        extra_compile_args=["/O2", "/openmp"] if sys.platform == "win32" else ["-O3", "-fopenmp", "-ffp-contract=fast"],
        extra_link_args=[] if sys.platform == "win32" else ["-fopenmp"],
    )
]

# Compile in parallel (MRFENGINE_BUILD_JOBS, default: one job per CPU).
ParallelCompile("MRFENGINE_BUILD_JOBS").install()
setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
