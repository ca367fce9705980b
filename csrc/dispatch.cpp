// See dispatch.hpp.  Compiled for the baseline (like the bindings): nothing
// here may use an instruction the levels it chooses between need.
#include "dispatch.hpp"

#include "cpu_features.hpp"

#include <stdexcept>

namespace mrfengine {

#if MRFENGINE_DISPATCH_X86
namespace isa_baseline {
extern const KernelTable table;
}
namespace isa_avx2 {
extern const KernelTable table;
}
namespace isa_avx512 {
extern const KernelTable table;
}
#else
namespace isa_single {
extern const KernelTable table;
}
#endif

namespace {

struct Level {
    const KernelTable* table;
    const char* needs;
    bool (*cpu_has)();
};

using cpu::always;
#if MRFENGINE_DISPATCH_X86
using cpu::has_avx2;
using cpu::has_avx512;
const Level kLevels[] = {
    {&isa_baseline::table, "sse2", &always},
    {&isa_avx2::table, "avx2 fma bmi bmi2", &has_avx2},
    {&isa_avx512::table, "avx512f avx512bw avx512dq avx512vl avx2 fma bmi bmi2", &has_avx512},
};
#else
const Level kLevels[] = {{&isa_single::table, "the build machine's (single build)", &always}};
#endif

const KernelTable* g_chosen = nullptr;

std::string offered() {
    std::string built, runs;
    for (const Level& level : kLevels) {
        built += (built.empty() ? "" : ", ") + std::string(level.table->name);
        if (level.cpu_has()) runs += (runs.empty() ? "" : ", ") + std::string(level.table->name);
    }
    return "this build has " + built + "; this CPU runs " + runs;
}

}  // namespace

std::vector<IsaLevel> isa_levels() {
    std::vector<IsaLevel> out;
    for (const Level& level : kLevels) out.push_back({level.table->name, level.cpu_has(), level.needs});
    return out;
}

const KernelTable& select_kernels(const char* forced) {
    const std::string want = forced == nullptr ? "" : forced;
    if (want.empty() || want == "auto") {
        const KernelTable* best = nullptr;
        for (const Level& level : kLevels)
            if (level.cpu_has()) best = level.table;  // ascending: the last supported is the best
        g_chosen = best;
        return *g_chosen;
    }
    for (const Level& level : kLevels) {
        if (want != level.table->name) continue;
        if (!level.cpu_has())
            throw std::runtime_error("MRFENGINE_ISA=" + want + ": this CPU lacks what the " + want +
                                     " kernels need (" + level.needs + "); " + offered() +
                                     ". Unset MRFENGINE_ISA to use the best level this CPU runs.");
        g_chosen = level.table;
        return *g_chosen;
    }
    const bool known = want == "baseline" || want == "avx2" || want == "avx512" || want == "native";
    const bool native = std::string(kLevels[0].table->name) == "native";
    throw std::runtime_error("MRFENGINE_ISA=" + want + ": " +
                             (known ? "this build has no such kernels" : "not an ISA level (auto, baseline, avx2, avx512)") +
                             "; " + offered() + (native ? " (built with MRFENGINE_NATIVE=1: -march=native only)" : "") +
                             ".");
}

const KernelTable& kernels() {
    if (g_chosen == nullptr) select_kernels(nullptr);
    return *g_chosen;
}

}  // namespace mrfengine
