/*
 * vr_native.h: what the package's native files share (one library, reached through ctypes): the export
 * macro, and the products of vr_rows.c that vr_tail.c calls.
 */
#ifndef VR_NATIVE_H
#define VR_NATIVE_H
#include <stdint.h>

#if defined(_WIN32)
#define VR_API __declspec(dllexport)
#else
#define VR_API __attribute__((visibility("default")))
#endif

/* native/vr_rows.c */
VR_API int32_t vr_rows_axpy(int32_t type, const void *data, int64_t row_bytes, int64_t n_cols, const int64_t *ids,
                            int64_t n, const float *coef, float *out, int32_t threads);
VR_API int32_t vr_rows_dot(int32_t type, const void *data, int64_t row_bytes, int64_t n_cols, const int64_t *ids,
                           int64_t n, const float *x, float *out, int32_t threads);

#endif
