/*
 * vr_native.h: the package's native library (one library, reached through ctypes): the export macro and
 * every function it exports, with the structs they take. vreason_local/native.py declares the same
 * signatures for ctypes in one table, which tests/test_native_decls.py checks against this file's
 * prototypes and structs: an export is declared here first, and each .c file includes this header, so the
 * compiler holds every definition to its prototype.
 */
#ifndef VR_NATIVE_H
#define VR_NATIVE_H
#include <stdbool.h>
#include <stddef.h>
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

/* A matrix where it lies, as vr_rows.c reads it: ggml type, n_rows rows of row_bytes bytes, n_cols values. */
typedef struct {
    int32_t type;
    const void *data;
    int64_t n_rows;
    int64_t row_bytes;
    int64_t n_cols;
} vr_matrix;

/* vr_tail_grad_dv's inputs and output (vr_tail.c has the maths): the last FFN's and attention output's
 * matrices, the state llama.cpp computed for the token, the value rows and where the gradient goes. */
typedef struct {
    const vr_matrix *down;
    const vr_matrix *gate;
    const vr_matrix *up;
    const vr_matrix *o;
    const float *y;        /* the layer's output [n_embd] */
    const float *out_norm; /* the final norm's weights [n_embd] */
    const float *ffn_inp;  /* the residual before the FFN [n_embd] */
    const float *ffn_norm; /* the FFN norm's weights [n_embd] */
    const float *gate_act; /* the FFN's gate projection before the SiLU [n_ff] */
    const float *up_act;   /* its up projection [n_ff] */
    float eps;             /* the RMS norms' epsilon */
    const float *grad_h;   /* ∂L/∂h [n_embd] */
    const float *probs;    /* attention probabilities [n_head, n_rows], row stride probs_ld */
    int64_t probs_ld;
    const float *v_base; /* the value rows V [n_rows, n_kv, head_dim] */
    const float *dv;     /* dV, the same shape */
    const float *v_norm; /* ||V|| per row and kv head [n_rows, n_kv] */
    int32_t n_head;
    int32_t n_kv;
    int32_t head_dim;
    int64_t n_rows;
    float *grad_dv; /* out: ∂L/∂dV, V's shape */
    int32_t threads;
} vr_grad_dv_args;

/* ggml's tensor, mirrored in vr_hook.c (Python checks the mirror against the running ggml); the hook's state. */
struct vr_tensor;
typedef struct vr_hook vr_hook;
/* A ggml_backend_sched_eval_callback. */
typedef bool (*vr_eval_fn)(struct vr_tensor *t, bool ask, void *user_data);

/* native/vr_simd.c: every file's kernels at `lanes` lanes together (0: each its best); -1 where one has none. */
VR_API int32_t vr_simd_use(int32_t lanes);

/* Each file's kernels at `lanes` lanes (0: the CPU's best); -1 where the build or CPU has none. */
VR_API int32_t vr_sampling_use(int32_t lanes);
VR_API int32_t vr_rows_use(int32_t lanes);
VR_API int32_t vr_tail_adam_use(int32_t lanes);
VR_API int32_t vr_tail_use_f16c(int32_t on);
/* The lanes each runs at now. */
VR_API int32_t vr_sampling_lanes(void);
VR_API int32_t vr_rows_lanes(void);
VR_API int32_t vr_tail_adam_lanes(void);

/* native/vr_sampling.c */
VR_API int64_t vr_argmax_entropy(const float *logits, int64_t n, double *entropy);
VR_API double vr_softmax(const float *logits, int64_t n, float max, float inv_t, float *e);
VR_API int64_t vr_draw(const float *e, int64_t n, float c, double u);
VR_API int64_t vr_nucleus_hist_size(void);
VR_API float vr_nucleus_cut(const float *e, int64_t n, double total, double target, int32_t *ids, double *hist);
VR_API int64_t vr_head_terms(const float *logits, const float *norms, int64_t n, int64_t k, float *t, int64_t *ids,
                             double *stats);

/* native/vr_rows.c */
VR_API int32_t vr_rows_block(int32_t type);
VR_API int32_t vr_rows_openmp(void);
VR_API int32_t vr_rows_axpy(int32_t type, const void *data, int64_t row_bytes, int64_t n_cols, const int64_t *ids,
                            int64_t n, const float *coef, float *out, int32_t threads);
VR_API int32_t vr_rows_dot(int32_t type, const void *data, int64_t row_bytes, int64_t n_cols, const int64_t *ids,
                           int64_t n, const float *x, float *out, int32_t threads);

/* native/vr_tail.c */
VR_API int32_t vr_tail_grad_dv(const vr_grad_dv_args *args);
VR_API void vr_tail_rms_norm(const float *x, const float *w, int64_t n, float eps, float *out);
VR_API void vr_tail_halves(const float *x, uint16_t *y, int32_t n);
VR_API double vr_tail_norm_preserving_change(const float *v_base, const float *dv, const float *v_norm, int64_t n,
                                             int32_t d, uint16_t *v16, const uint16_t *old, double *out);
VR_API int64_t vr_tail_head_anchor(const vr_matrix *head, const float *z, const float *t, const int64_t *ranked,
                                   int64_t cap, double total, double log_total, double entropy, int32_t alpha,
                                   double err, double *ratio, float *grad_h, int64_t *ids, double *out,
                                   int32_t threads);
VR_API double vr_tail_selfcheck(const vr_matrix *head, const int64_t *ids, int64_t n, const float *z, const float *h,
                                int32_t k);
VR_API double vr_tail_adam(float *p, const float *g, float *m, float *v, int64_t n, double lr, double b1, double b2,
                           double eps, int64_t t);

/* native/vr_hook.c: ggml_tensor's fields through the mirror, for Python's layout check and the hook */
VR_API size_t vr_tensor_size(void);
VR_API size_t vr_name_offset(void);
VR_API size_t vr_view_src_offset(void);
VR_API int32_t vr_tensor_type(const struct vr_tensor *t);
VR_API int64_t vr_tensor_ne(const struct vr_tensor *t, int i);
VR_API size_t vr_tensor_nb(const struct vr_tensor *t, int i);
VR_API const struct vr_tensor *vr_tensor_view_src(const struct vr_tensor *t);
VR_API const char *vr_tensor_name(const struct vr_tensor *t);
VR_API void *vr_tensor_data(const struct vr_tensor *t);
VR_API void *vr_tensor_buffer(const struct vr_tensor *t);
/* the value-cache hook */
VR_API vr_hook *vr_hook_new(void *tensor_get);
VR_API void vr_hook_free(vr_hook *h);
VR_API int vr_hook_add_capture(vr_hook *h, const char *name, size_t cap_bytes);
VR_API int vr_hook_add_weight(vr_hook *h, const char *name);
VR_API const struct vr_tensor *vr_hook_weight(const vr_hook *h, int i);
VR_API void vr_hook_set_cache_names(vr_hook *h, const char *k_name, const char *v_name);
VR_API void vr_hook_enable(vr_hook *h, int on);
VR_API void vr_hook_reset(vr_hook *h);
VR_API const void *vr_hook_capture(const vr_hook *h, int i, int64_t *ne, size_t *n_bytes, int64_t *n_seen,
                                   int32_t *error);
VR_API struct vr_tensor *vr_hook_cache(const vr_hook *h, int which);
VR_API int64_t vr_hook_n_asked(const vr_hook *h);
VR_API int64_t vr_hook_n_observed(const vr_hook *h);
VR_API bool vr_hook_callback(struct vr_tensor *t, bool ask, void *user_data);
/* cancellation inside a graph compute (llama_backend.CancelFlag) */
VR_API bool vr_abort_requested(void *data);
VR_API bool vr_cancel_eval(struct vr_tensor *t, bool ask, void *data);
/* benchmarks/bench_vreason.py: seconds for n calls of an eval callback */
VR_API double vr_time_callback(vr_eval_fn fn, struct vr_tensor *t, void *user_data, int64_t n);
#if !defined(_WIN32)
/* POSIX only: rows of a tensor read straight from the model file */
VR_API int64_t vr_read_rows(int fd, int64_t base, int64_t row_bytes, const int64_t *ids, int64_t n, uint8_t *out);
#endif

#endif
