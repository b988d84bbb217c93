/*
 * vr_simd: one switch for the SIMD level of every kernel in the library (VREASON_SIMD, read by
 * vreason_local/native.py): the sampling kernels (vr_sampling.c), the GGUF row products (vr_rows.c), the
 * optimiser's Adam step and the F16 conversion of the value rows written (vr_tail.c). Each file can also be
 * switched alone (the tests do); this keeps them at one level, so that a run forced to AVX2 on an AVX-512
 * machine runs what a laptop without AVX-512 runs.
 */
#include "vr_native.h"

/* Run every kernel at `lanes` lanes: 16 AVX-512, 8 AVX2 (+FMA, F16C), 4 the baseline (SSE2 on x86-64, NEON on
 * arm64), 1 plain scalar C; 0 the CPU's best. Returns `lanes` (or, for 0, the best's lanes), or -1 when this
 * build or CPU lacks that level (every kernel is then left at the CPU's best). */
VR_API int32_t vr_simd_use(int32_t lanes) {
    if (lanes == 0) { /* each file's best (a CPU may have AVX-512F without the BW that vr_rows.c needs) */
        vr_sampling_use(0), vr_tail_adam_use(0), vr_tail_use_f16c(1);
        return vr_rows_use(0);
    }
    if (vr_sampling_use(lanes) < 0 || vr_rows_use(lanes) < 0 || vr_tail_adam_use(lanes) < 0) {
        vr_simd_use(0);
        return -1;
    }
    vr_tail_use_f16c(lanes >= 8); /* F16C comes with the AVX2 level; below it the conversion is portable C */
    return lanes;
}
