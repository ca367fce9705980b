"""Disassembly checks shared by the ISA tests (tests/test_isa_dispatch.py: the Python
extension; tests/test_cpp_api.py: a program linked against the C++ API's static library).

A portable build compiles its kernels once per ISA level into the namespaces
``isa_avx2`` / ``isa_avx512`` (csrc/isa.hpp); whatever the baseline path can run
must hold no VEX/EVEX-encoded (AVX) instruction, or the binary faults with SIGILL
on a CPU without AVX.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

AVX_LEVELS = ("isa_avx2::", "isa_avx512::")


def avx_only(function: str) -> bool:
    """Code that only the AVX levels can reach: their namespaces, and templates on
    their vector types (32 or 64 bytes; the baseline's are 16)."""
    if any(level in function for level in AVX_LEVELS):
        return True
    widths = [int(n) * (8 if t in ("double", "long") else 4)
              for t, n in re.findall(r"\b(float|int|double|long) __vector\((\d+)\)", function)]
    return any(w >= 32 for w in widths)


def avx_outside_levels(binary: str) -> tuple[dict[str, int], set[str]]:
    """``(leaks, levels)`` of ``binary``: the functions outside the AVX levels that hold
    AVX instructions (name -> count; functions defined elsewhere, e.g. libc's, are not
    counted) and the AVX levels found at all.  Skips without binutils."""
    objdump, nm = shutil.which("objdump"), shutil.which("nm")
    if objdump is None or nm is None:
        pytest.skip("objdump / nm (binutils) not installed")

    def run(*args: str) -> str:
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout

    local = {int(f[0], 16) for f in (line.split() for line in run(nm, "--defined-only", binary).splitlines())
             if len(f) >= 3 and f[1] in "tbdr"}
    function, address, leaks, levels = "", 0, {}, set()
    for line in run(objdump, "-d", "--no-show-raw-insn", "-C", binary).splitlines():
        head = re.match(r"^([0-9a-f]+) <(.*)>:$", line)
        if head:
            address, function = int(head.group(1), 16), head.group(2)
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not parts[1].strip():
            continue
        mnemonic = parts[1].split()[0]
        if not mnemonic.startswith("v") or mnemonic in ("verr", "verw"):
            continue
        levels |= {lv for lv in AVX_LEVELS if lv in function}
        if not avx_only(function) and address not in local:
            leaks[function] = leaks.get(function, 0) + 1
    return leaks, levels
