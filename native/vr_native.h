/*
 * vr_native.h: what the package's native files share (one library, reached through ctypes): the export
 * macro, the products of vr_rows.c that vr_tail.c calls, and each file's kernel switch, which vr_simd.c sets
 * together.
 */
#ifndef VR_NATIVE_H
#define VR_NATIVE_H
#include <stdint.h>

#if defined(_WIN32)
#define VR_API __declspec(dllexport)
#else
#define VR_API __attribute__((visibility("default")))
#endif

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
/* Whether the CPU has F16C (CPUID leaf 1, ECX bit 29): clang before 18 has no "f16c" for __builtin_cpu_supports. */
static inline int vr_cpu_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

/* native/vr_rows.c */
VR_API int32_t vr_rows_axpy(int32_t type, const void *data, int64_t row_bytes, int64_t n_cols, const int64_t *ids,
                            int64_t n, const float *coef, float *out, int32_t threads);
VR_API int32_t vr_rows_dot(int32_t type, const void *data, int64_t row_bytes, int64_t n_cols, const int64_t *ids,
                           int64_t n, const float *x, float *out, int32_t threads);

/* Each file's kernels at `lanes` lanes (0: the CPU's best); -1 where the build or CPU has none. */
VR_API int32_t vr_sampling_use(int32_t lanes);
VR_API int32_t vr_rows_use(int32_t lanes);
VR_API int32_t vr_tail_adam_use(int32_t lanes);
VR_API int32_t vr_tail_use_f16c(int32_t on);
VR_API int32_t vr_simd_use(int32_t lanes);

#endif
