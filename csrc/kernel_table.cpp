// The KernelTable of one ISA level (compiled once per level with its kernels,
// isa.hpp): the level's entry points, for dispatch.cpp.
#include "isa.hpp"  // first: the level's namespace, for the headers' kernel declarations
#include "api/search.hpp"
#include "dispatch.hpp"
#include "eigen_sym.hpp"
#include "match.hpp"
#include "mppca.hpp"
#include "separable.hpp"

namespace mrfengine {
namespace MRFENGINE_KERNEL_NS {

#if MRFENGINE_ISA_LEVEL == 4
#define MRFENGINE_LEVEL_NAME "avx512"
#elif MRFENGINE_ISA_LEVEL == 3
#define MRFENGINE_LEVEL_NAME "avx2"
#elif MRFENGINE_ISA_LEVEL == 1 || !defined(MRFENGINE_NATIVE_BUILD)
#define MRFENGINE_LEVEL_NAME "baseline"
#else
#define MRFENGINE_LEVEL_NAME "native"
#endif

extern const KernelTable table;
const KernelTable table = {
    MRFENGINE_LEVEL_NAME,
    simd::kBytes,
    &match_argmax_f32,
    &match_separable_f32,
    &mppca_accumulate<float>,
    &mppca_accumulate<double>,
    &eigen::eigh_sym<float>,
    &eigen::eigh_sym<double>,
    &search_table,
};

}  // namespace MRFENGINE_KERNEL_NS
}  // namespace mrfengine
