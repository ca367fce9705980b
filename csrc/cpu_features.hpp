// What the running CPU can execute, for the run-time choice of an ISA level:
// csrc/dispatch.cpp (the Python extension's KernelTable) and
// csrc/api/match_api.cpp (the C++ API's search table) both ask here.
//
// __builtin_cpu_supports reports AVX / AVX-512 only where the OS saves their
// registers too (XCR0), so a level it accepts can run.
#pragma once

namespace mrfengine {
namespace cpu {

inline bool always() { return true; }

#if defined(__x86_64__) || defined(__i386__)
// x86-64-v3: what the AVX2 level is compiled with (-mavx2 -mfma -mbmi -mbmi2).
inline bool has_avx2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
           __builtin_cpu_supports("bmi2");
}

// x86-64-v4: the AVX-512 level (-mavx512f -mavx512bw -mavx512dq -mavx512vl) on top of v3.
inline bool has_avx512() {
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}
#endif

}  // namespace cpu
}  // namespace mrfengine
