// The ISA level a kernel translation unit (match, separable, mppca,
// eigen_sym, kernel_table) is compiled for, and the namespace its code lives
// in (MRFENGINE_KERNEL_NS).
//
// Portable x86-64 builds compile each kernel source once per level (setup.py):
// -DMRFENGINE_ISA_LEVEL=1 with the baseline's flags (x86-64: SSE2),
// 3 with -mavx2 -mfma -mbmi -mbmi2 (x86-64-v3) and 4 with AVX-512 F/BW/DQ/VL
// on top (x86-64-v4); dispatch.cpp picks one level's KernelTable at run time.
// Level 0 is a single build whose target is the compiler's flags
// (-march=native with MRFENGINE_NATIVE=1, or the baseline of a non-x86 target
// such as aarch64, where NEON is baseline).
//
// Keeping the levels apart.  Every symbol of ours that depends on the ISA
// (simd.hpp, eigen_sym.hpp, the kernels) is in the level's namespace, and the
// SIMD vector types have a different width per level (simd.hpp), so standard
// templates instantiated on them (std::vector of vectors) differ per level
// too.  What the levels still share are instantiations on plain types
// (std::vector<float>, std::sort of floats, ...): weak symbols of which the
// linker keeps the first copy it sees.  setup.py links the bindings and the
// baseline level before the AVX2 and AVX-512 levels, so the copy kept is
// baseline code, and tests/test_isa_dispatch.py disassembles the extension
// to check that no function outside isa_avx2 / isa_avx512 holds an AVX
// (VEX/EVEX-encoded) instruction.
//
// (A `#pragma GCC target` region instead of flags was tried: GCC then
// instantiates std::vector<V> with the baseline's 16-byte alignment of a
// 32-byte vector type, and AVX2 stores to its elements fault.)
#pragma once

#ifndef MRFENGINE_ISA_LEVEL
#define MRFENGINE_ISA_LEVEL 0
#endif

#if MRFENGINE_ISA_LEVEL == 0
#define MRFENGINE_KERNEL_NS isa_single
#elif MRFENGINE_ISA_LEVEL == 1
#define MRFENGINE_KERNEL_NS isa_baseline
#if defined(__AVX__)
#error "MRFENGINE_ISA_LEVEL=1 (baseline x86-64) is compiled without AVX (-march=x86-64)"
#endif
#elif MRFENGINE_ISA_LEVEL == 3
#define MRFENGINE_KERNEL_NS isa_avx2
#if !defined(__AVX2__) || !defined(__FMA__) || defined(__AVX512F__)
#error "MRFENGINE_ISA_LEVEL=3 (AVX2) is compiled with -mavx2 -mfma and without AVX-512"
#endif
#elif MRFENGINE_ISA_LEVEL == 4
#define MRFENGINE_KERNEL_NS isa_avx512
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512DQ__) || !defined(__AVX512VL__)
#error "MRFENGINE_ISA_LEVEL=4 (AVX-512) is compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl"
#endif
#else
#error "MRFENGINE_ISA_LEVEL must be 0 (single build), 1 (baseline), 3 (AVX2) or 4 (AVX-512)"
#endif
