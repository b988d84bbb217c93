/*
 * vr_tail: the first optimiser step of a V-Reason update on the CPU, in native code, at the state
 * llama.cpp computed for the token (vreason_local/tail.py and vreason.py call it; their torch and numpy
 * code is the reference the tests compare each function with, and the path on GPUs and other storages):
 *   - vr_tail_head_anchor: the LM-head rows the gradient's error bound needs and their gradient at h;
 *   - vr_tail_grad_dv: from there the gradient with respect to dV, through the last FFN, the attention
 *     output and the norm-preserving write (Tail.backward_at_llama_state, tail.norm_preserving_vjp);
 *   - vr_tail_selfcheck, vr_tail_rms_norm, vr_tail_norm_preserving_change: the self-check, llama.cpp's final
 *     norm, and the new value rows as the F16 llama.cpp stores.
 * The matrices' products are vr_rows.c's, on the GGUF rows where they lie.
 *
 * Why C: in torch and numpy the step was ~60 small operations on vectors of 2,048-11,008 values and on
 * dV's 73,728. Inside an answer the first call of each distinct operation costs 20-60 µs whatever its size
 * (measured: an addition of 2,048 floats took 65 µs as an update's first torch call, 3 µs as its second),
 * its code evicted from the caches by llama.cpp's decode; all of this is a few KB of code.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vr_native.h"

/* The threads for a product of `values` weights: one below a million (a hand-off costs more than it saves
 * there), as tail_weights.GGUFMatrix.SERIAL. */
static int32_t team(int64_t values, int32_t threads) { return values < (1 << 20) ? 1 : threads; }

/* out += Wᵀ·g */
static int32_t mv_t(const vr_matrix *w, const float *g, float *out, int32_t threads) {
    return vr_rows_axpy(w->type, w->data, w->row_bytes, w->n_cols, NULL, w->n_rows, g, out,
                        team(w->n_rows * w->n_cols, threads));
}

/* out = gᵀ·∂rms_norm(x)/∂x = r·a - x·r³·mean(x·a), with a = w·g and r = (mean(x²) + eps)^-1/2. */
static void rms_norm_vjp(const float *x, const float *w, const float *g, int64_t n, float eps, float *out) {
    double xx = 0.0, xa = 0.0;
    for (int64_t i = 0; i < n; i++) xx += (double)x[i] * x[i], xa += (double)x[i] * w[i] * g[i];
    const double r = 1.0 / sqrt(xx / (double)n + eps);
    const float c_a = (float)r, c_x = (float)(r * r * r * xa / (double)n);
    for (int64_t i = 0; i < n; i++) out[i] = c_a * (w[i] * g[i]) - c_x * x[i];
}

/* Σ a_i·b_i over n values in 8 partial sums: the compiler may not reorder one chain of float additions,
 * and vectorises these. The loop walks pointers: with an int index i, `i + 8 <= n` may wrap under Python's
 * -fwrapv (setup.py's flags), which kept GCC 12 from vectorising it at all (the write below took 80 µs
 * instead of 35 on the 3B shape). */
static float dot(const float *a, const float *b, int32_t n) {
    float s[8] = {0}, t = 0.0f;
    for (const float *end = a + (n & ~7); a < end; a += 8, b += 8)
        for (int k = 0; k < 8; k++) s[k] += a[k] * b[k];
    for (int32_t i = 0; i < (n & 7); i++) t += a[i] * b[i];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])) + t;
}

#define VR_MAX_HEAD_DIM 1024

/*
 * grad_dv[r, k, :] = ∂L/∂dV for the value rows r of kv head k, from grad_h = ∂L/∂h at the state llama.cpp
 * computed: y (its layer output), ffn_inp (the residual before the FFN), gate_act and up_act (the FFN's
 * projections before the SiLU), and probs [n_head, n_rows] (the attention probabilities at the rows,
 * row stride probs_ld). With s = sigmoid(gate):
 *     dy = rms_vjp(y, out_norm, grad_h);  d_act = W_downᵀ·dy
 *     d_up = d_act·gate·s;  d_gate = d_act·up·s·(1 + gate·(1 - s))
 *     dx = dy + rms_vjp(ffn_inp, ffn_norm, W_gateᵀ·d_gate + W_upᵀ·d_up);  d_attn = W_oᵀ·dx
 *     ∂L/∂V_new[r, k] = Σ_{heads h of group k} probs[h, r]·d_attn[h]
 * then through V_new = (V + dV)/||V + dV||·||V|| (per row and kv head; v_norm = ||V||): with v = V + dV,
 * ∂L/∂dV = ||V||/||v||·(G - v·(v·G)/||v||²). Returns 0, -1 when out of memory, -2 when a matrix is of
 * a type vr_rows.c does not read, -3 for a head_dim above VR_MAX_HEAD_DIM, -4 for shapes that do not fit
 * together (checked before anything is read: every length below is trusted from them): gate and up
 * [n_ff rows, n_embd], o [n_embd rows, n_head·head_dim], n_head a positive multiple of n_kv, head_dim
 * positive, probs_ld at least n_rows. The names are the fields of `args` (vr_native.h's vr_grad_dv_args): one
 * struct, filled once per tail by Python, where 23 positional arguments were easy to misplace.
 */
VR_API int32_t vr_tail_grad_dv(const vr_grad_dv_args *args) {
    const vr_matrix *down = args->down, *gate = args->gate, *up = args->up, *o = args->o;
    const float *y = args->y, *out_norm = args->out_norm, *ffn_inp = args->ffn_inp, *ffn_norm = args->ffn_norm;
    const float *gate_act = args->gate_act, *up_act = args->up_act, *grad_h = args->grad_h, *probs = args->probs;
    const float *v_base = args->v_base, *dv = args->dv, *v_norm = args->v_norm, eps = args->eps;
    const int64_t probs_ld = args->probs_ld, n_rows = args->n_rows;
    const int32_t n_head = args->n_head, n_kv = args->n_kv, head_dim = args->head_dim, threads = args->threads;
    float *grad_dv = args->grad_dv;
    const int64_t n_embd = down->n_rows, n_ff = down->n_cols, n_q = (int64_t)n_head * head_dim;
    if (head_dim > VR_MAX_HEAD_DIM) return -3;
    if (n_embd < 1 || n_ff < 1 || n_kv < 1 || n_head < n_kv || n_head % n_kv || head_dim < 1 || n_rows < 0 ||
        probs_ld < n_rows || gate->n_rows != n_ff || gate->n_cols != n_embd || up->n_rows != n_ff ||
        up->n_cols != n_embd || o->n_rows != n_embd || o->n_cols != n_q)
        return -4;
    const int32_t group = n_head / n_kv; /* query head h uses kv head h / group */
    float *buf = calloc((size_t)(3 * n_embd + 2 * n_ff + n_q + head_dim), sizeof(float));
    if (!buf) return -1;
    float *dy = buf, *d_n = dy + n_embd, *dx = d_n + n_embd, *d_gate = dx + n_embd, *d_up = d_gate + n_ff;
    float *d_attn = d_up + n_ff, *g_v = d_attn + n_q;
    int32_t err = 0;
    rms_norm_vjp(y, out_norm, grad_h, n_embd, eps, dy);
    err |= mv_t(down, dy, d_gate, threads); /* d_act, made d_gate below */
    for (int64_t i = 0; i < n_ff; i++) {
        const float g = gate_act[i], s = 1.0f / (1.0f + expf(-g));
        d_up[i] = d_gate[i] * g * s;
        d_gate[i] *= up_act[i] * s * (1.0f + g * (1.0f - s));
    }
    err |= mv_t(gate, d_gate, d_n, threads);
    err |= mv_t(up, d_up, d_n, threads);
    rms_norm_vjp(ffn_inp, ffn_norm, d_n, n_embd, eps, dx);
    for (int64_t i = 0; i < n_embd; i++) dx[i] += dy[i];
    err |= mv_t(o, dx, d_attn, threads);
    for (int64_t r = 0; r < n_rows; r++)
        for (int32_t k = 0; k < n_kv; k++) {
            memset(g_v, 0, sizeof(float) * (size_t)head_dim);
            for (int32_t h = k * group; h < (k + 1) * group; h++) {
                const float p = probs[h * probs_ld + r], *d = d_attn + (int64_t)h * head_dim;
                for (int32_t e = 0; e < head_dim; e++) g_v[e] += p * d[e];
            }
            const int64_t at = (r * n_kv + k) * head_dim;
            float v[VR_MAX_HEAD_DIM];
            for (int32_t e = 0; e < head_dim; e++) v[e] = v_base[at + e] + dv[at + e];
            float vv = dot(v, v, head_dim);
            vv = vv > 1e-24f ? vv : 1e-24f; /* as norm_preserving_vjp's clamp of ||v|| at 1e-12 */
            const float scale = v_norm[r * n_kv + k] / sqrtf(vv), along = dot(v, g_v, head_dim) / vv;
            for (int32_t e = 0; e < head_dim; e++) grad_dv[at + e] = scale * (g_v[e] - v[e] * along);
        }
    free(buf);
    return err ? -2 : 0;
}

/* out = x·w / sqrt(mean(x²) + eps): the final norm of llama.cpp's layer output (Tail.llama_state). */
VR_API void vr_tail_rms_norm(const float *x, const float *w, int64_t n, float eps, float *out) {
    double xx = 0.0;
    for (int64_t i = 0; i < n; i++) xx += (double)x[i] * x[i];
    const float r = (float)(1.0 / sqrt(xx / (double)n + eps));
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * r * w[i];
}

/* IEEE half of f, rounded to nearest even (as F16C, numpy and torch round). */
static uint16_t float_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
    if (a >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u)); /* inf, nan */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);                                 /* rounds to inf */
    if (a < 0x38800000u) { /* a half subnormal: a multiple of 2^-24, rounded as the float unit rounds */
        float m;
        memcpy(&m, &a, 4);
        return (uint16_t)(sign | (uint32_t)lrintf(m * 16777216.0f));
    }
    const uint32_t r = a - 0x38000000u; /* the exponent's bias 127 -> 15 */
    return (uint16_t)(sign | (r + 0x0fffu + ((r >> 13) & 1u)) >> 13);
}

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define VR_TAIL_F16C 1
__attribute__((target("avx,f16c"))) static void halves_f16c(const float *x, uint16_t *y, int32_t n) {
    int32_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = float_half(x[i]);
}
#endif

static int vr_f16c = -1; /* whether halves() uses F16C: -1 until asked (a benign race: all find the same) */

/* Use F16C (on = 1, where the CPU has it) or the portable conversion (0), so that tests check both;
 * returns whether F16C is in use. */
VR_API int32_t vr_tail_use_f16c(int32_t on) {
    vr_f16c = 0;
#ifdef VR_TAIL_F16C
    __builtin_cpu_init();
    vr_f16c = on && vr_cpu_f16c() && __builtin_cpu_supports("avx");
#else
    (void)on;
#endif
    return vr_f16c;
}

/* y = x as IEEE halves: with F16C where the CPU has it (8 at a time), else float_half. */
static void halves(const float *x, uint16_t *y, int32_t n) {
    if (vr_f16c < 0) vr_tail_use_f16c(1);
#ifdef VR_TAIL_F16C
    if (vr_f16c) {
        halves_f16c(x, y, n);
        return;
    }
#endif
    for (int32_t i = 0; i < n; i++) y[i] = float_half(x[i]);
}

/* halves() itself, for the tests. */
VR_API void vr_tail_halves(const float *x, uint16_t *y, int32_t n) { halves(x, y, n); }

/* The float of an IEEE half, exactly (every half is a float): its bits moved into place, the exponent's
 * bias (15 -> 127) added by a multiplication by 2^112, which is exact for subnormal halves too; infinities
 * and NaN (2^16 and above after it) get the float's top exponent. No branch, so loops of it vectorise. */
static inline float half_float(uint16_t h) {
    uint32_t x = (uint32_t)(h & 0x7fffu) << 13;
    float f;
    memcpy(&f, &x, 4);
    f *= (float)(1ull << 56) * (float)(1ull << 56); /* 2^112 */
    memcpy(&x, &f, 4);
    x |= (f >= 65536.0f ? 0x7f800000u : 0u) | (uint32_t)(h & 0x8000u) << 16;
    memcpy(&f, &x, 4);
    return f;
}

/* Σ (a_i - b_i)² over n values, in 8 partial sums as dot(). */
static float sq_dist(const float *a, const float *b, int32_t n) {
    float s[8] = {0}, t = 0.0f;
    for (const float *end = a + (n & ~7); a < end; a += 8, b += 8)
        for (int k = 0; k < 8; k++) s[k] += (a[k] - b[k]) * (a[k] - b[k]);
    for (int32_t i = 0; i < (n & 7); i++) t += (a[i] - b[i]) * (a[i] - b[i]);
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])) + t;
}

#ifdef VR_TAIL_F16C
__attribute__((target("avx,f16c"))) static float hsum_avx(__m256 x) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

/* change() with F16C: 8 values at a time in registers, with no pass through memory as floats. */
__attribute__((target("avx,f16c"))) static void change_f16c(const float *v, const uint16_t *now, const uint16_t *was,
                                                            int32_t n, float *written, float *intended) {
    __m256 sw = _mm256_setzero_ps(), si = _mm256_setzero_ps();
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 o = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(was + i)));
        const __m256 a = _mm256_sub_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(now + i))), o);
        const __m256 b = _mm256_sub_ps(_mm256_loadu_ps(v + i), o);
        sw = _mm256_add_ps(sw, _mm256_mul_ps(a, a)), si = _mm256_add_ps(si, _mm256_mul_ps(b, b));
    }
    float w = hsum_avx(sw), s = hsum_avx(si);
    for (; i < n; i++) {
        const float o = half_float(was[i]), a = half_float(now[i]) - o, b = v[i] - o;
        w += a * a, s += b * b;
    }
    *written = w, *intended = s;
}
#endif

/* For one vector of n values: *written = Σ (now_i - was_i)² and *intended = Σ (v_i - was_i)², with `now` and
 * `was` F16 halves (as floats) and v float32; with F16C where halves() uses it. */
static void change(const float *v, const uint16_t *now, const uint16_t *was, int32_t n, float *written,
                   float *intended) {
#ifdef VR_TAIL_F16C
    if (vr_f16c) {
        change_f16c(v, now, was, n, written, intended);
        return;
    }
#endif
    float a[VR_MAX_HEAD_DIM], b[VR_MAX_HEAD_DIM];
    for (int32_t i = 0; i < n; i++) a[i] = half_float(now[i]), b[i] = half_float(was[i]);
    *written = sq_dist(a, b, n), *intended = sq_dist(v, b, n);
}

/* V_new = (V + dV)·||V|| / ||V + dV|| for each of the n vectors of d values (a row's kv head; v_norm = ||V||,
 * ||V + dV|| clamped at 1e-12 as tail.norm_preserving does), as the F16 halves llama.cpp stores (v16);
 * returns ||dV||, or -1 for d above VR_MAX_HEAD_DIM. With `old` (the halves the cache held before, V_old
 * as floats) it also measures the write in the same pass (tail.ValueWrite), in float32 per vector summed
 * in double: out[0] = ||V16_new - V_old||, the change that reached the cache, and out[1] = ||V_new - V_old||,
 * the change asked for (V_new before its rounding to F16). A value's change below half an F16 step of it
 * is rounded away. The measure adds ~10 µs to the ~35 µs of a 3B update's write (73,728 values, F16C). */
VR_API double vr_tail_norm_preserving_change(const float *v_base, const float *dv, const float *v_norm, int64_t n,
                                             int32_t d, uint16_t *v16, const uint16_t *old, double *out) {
    if (d > VR_MAX_HEAD_DIM) return -1.0;
    if (vr_f16c < 0) vr_tail_use_f16c(1);
    double dd = 0.0, written = 0.0, intended = 0.0;
    float v[VR_MAX_HEAD_DIM];
    for (int64_t k = 0; k < n; k++) {
        const float *e = dv + k * d;
        for (int32_t i = 0; i < d; i++) v[i] = v_base[k * d + i] + e[i];
        const float norm = sqrtf(dot(v, v, d)), scale = v_norm[k] / (norm > 1e-12f ? norm : 1e-12f);
        for (int32_t i = 0; i < d; i++) v[i] *= scale;
        halves(v, v16 + k * d, d);
        dd += dot(e, e, d);
        if (old) {
            float w, i;
            change(v, v16 + k * d, old + k * d, d, &w, &i);
            written += w, intended += i;
        }
    }
    if (old) out[0] = sqrt(written), out[1] = sqrt(intended);
    return sqrt(dd);
}

static int cmp_id(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/*
 * An update's first step through the LM head, at llama.cpp's own state (vreason_local/tail.py,
 * RestrictedHead.at with nothing held moved: its Python code is the reference the tests compare this
 * with, and the path elsewhere). With vr_head_terms' results for the logits z (every row's term t_v =
 * ||W_v||·p_v·|l_v|, their sum `total`, ln Σ e^z and H, the `cap` rows of largest term `ranked`), rows are
 * kept in rank order until the bound B = total - Σ_K t_v meets err/(1 + err)·||G_K||: each round takes as
 * many as the target needs if ||G_K|| keeps its ratio to Σ_K t_v (*ratio, updated), at least 16 and a
 * quarter more, and adds g_v·W_v (g_v = p_v·l_v, read in file order) into G_K. Writes
 * grad_h = alpha·G_K (head->n_cols), the kept rows in the order read into ids (room for cap), and
 * out[0] = B, out[1] = ||grad_h||; returns how many rows it kept, -1 when out of memory, -2 when the
 * head is of a type vr_rows.c does not read.
 */
VR_API int64_t vr_tail_head_anchor(const vr_matrix *head, const float *z, const float *t, const int64_t *ranked,
                                   int64_t cap, double total, double log_total, double entropy, int32_t alpha,
                                   double err, double *ratio, float *grad_h, int64_t *ids, double *out,
                                   int32_t threads) {
    const int64_t n = head->n_rows;
    float *g = malloc(sizeof(float) * (size_t)(cap > 0 ? cap : 1));
    float *grad = calloc((size_t)head->n_cols, sizeof(float));
    if (!g || !grad) {
        free(g), free(grad);
        return -1;
    }
    const double target = err / (1.0 + err);
    int64_t kept = 0;
    double kept_t = 0.0, size = 0.0, bound = total;
    int32_t status = 0;
    for (;;) {
        double ss = 0.0;
        for (int64_t j = 0; j < head->n_cols; j++) ss += (double)grad[j] * grad[j];
        size = sqrt(ss);
        bound = kept == n ? 0.0 : (total - kept_t > 0.0 ? total - kept_t : 0.0);
        if (bound <= target * size || !isfinite(entropy) || kept >= cap) break;
        if (size > 0.0 && kept_t > 0.0) *ratio = size / kept_t;
        int64_t take = cap - kept;
        double rest = bound, weight = kept_t;
        for (int64_t i = 0; i < cap - kept; i++) {
            rest -= t[ranked[kept + i]], weight += t[ranked[kept + i]];
            if (rest <= target * *ratio * weight) {
                take = i + 1;
                break;
            }
        }
        const int64_t least = kept / 4 > 16 ? kept / 4 : 16;
        take = take > least ? take : least;
        take = take < cap - kept ? take : cap - kept;
        int64_t *fresh = ids + kept;
        memcpy(fresh, ranked + kept, sizeof(int64_t) * (size_t)take);
        qsort(fresh, (size_t)take, sizeof(int64_t), cmp_id); /* in file order: half the time of rank order */
        for (int64_t i = 0; i < take; i++) {
            const double lp = (double)z[fresh[i]] - log_total;
            g[i] = (float)(alpha * exp(lp) * (lp + entropy));
            kept_t += t[fresh[i]];
        }
        status |= vr_rows_axpy(head->type, head->data, head->row_bytes, head->n_cols, fresh, take, g, grad,
                               team(take * head->n_cols, threads));
        kept += take;
    }
    memcpy(grad_h, grad, sizeof(float) * (size_t)head->n_cols);
    out[0] = bound, out[1] = size;
    free(g), free(grad);
    return status ? -2 : kept;
}

#define VR_MAX_CHECK 256

/* The self-check at llama.cpp's state (vreason_local/vreason.py, VReason._selfcheck): among the n kept
 * rows `ids` of the LM head, the k (at most VR_MAX_CHECK) whose logits z are largest; returns
 * max |W_v·h - z_v| / max(1, max |z_v|) over them, -1 for a k out of range, -2 for a head of a type
 * vr_rows.c does not read. */
VR_API double vr_tail_selfcheck(const vr_matrix *head, const int64_t *ids, int64_t n, const float *z, const float *h,
                                int32_t k) {
    if (k < 1 || k > VR_MAX_CHECK) return -1.0;
    int64_t top[VR_MAX_CHECK] = {0}; /* zeroed for GCC 12, which warns that vr_rows_dot may read it unset (m = 0) */
    float at[VR_MAX_CHECK], tail[VR_MAX_CHECK];
    int32_t m = 0;
    for (int64_t i = 0; i < n; i++) { /* kept in decreasing order: an insertion, rarely past the first test */
        const float v = z[ids[i]];
        if (m == k && !(v > at[m - 1])) continue;
        int32_t j = m < k ? m++ : m - 1;
        for (; j > 0 && at[j - 1] < v; j--) at[j] = at[j - 1], top[j] = top[j - 1];
        at[j] = v, top[j] = ids[i];
    }
    if (vr_rows_dot(head->type, head->data, head->row_bytes, head->n_cols, top, m, h, tail, 1)) return -2.0;
    double worst = 0.0, scale = 1.0;
    for (int32_t i = 0; i < m; i++) {
        const double d = fabs((double)tail[i] - at[i]), a = fabs((double)at[i]);
        worst = d > worst ? d : worst, scale = a > scale ? a : scale;
    }
    return worst / scale;
}

/* One Adam step on n values, torch.optim.Adam's single-tensor arithmetic (no weight decay, no amsgrad) in
 * float32 (vreason_local/optim.py, tested against torch.optim): m += (1 - b1)·(g - m); v = b2·v + (1 - b2)·g²;
 * p -= lr / (1 - b1^t) · m / (sqrt(v) / sqrt(1 - b2^t) + eps), t the step's number from 1. Returns Σ g²,
 * which is not finite when the gradient is not. The loop is written once and compiled per target, as the
 * kernels of vr_rows.c are, so that VREASON_SIMD (vr_simd_use) picks it too: vectorised (no reduction in it,
 * sqrtf inlined with -fno-math-errno) for AVX-512, AVX2 and the baseline, and kept scalar for `scalar`. */
static inline __attribute__((always_inline)) double adam_body(float *p, const float *g, float *m, float *v, int64_t n,
                                                              double lr, double b1, double b2, double eps, int64_t t) {
    const float w1 = (float)(1.0 - b1), fb2 = (float)b2, w2 = (float)(1.0 - b2), feps = (float)eps;
    const float step = (float)(-lr / (1.0 - pow(b1, (double)t))), bc2 = (float)sqrt(1.0 - pow(b2, (double)t));
    for (int64_t i = 0; i < n; i++) {
        const float gi = g[i];
        m[i] += w1 * (gi - m[i]);
        v[i] = v[i] * fb2 + w2 * (gi * gi);
        p[i] += step * (m[i] / (sqrtf(v[i]) / bc2 + feps));
    }
    double gg = 0.0;
    for (int64_t i = 0; i < n; i += 1 << 16) gg += dot(g + i, g + i, (int32_t)(n - i < (1 << 16) ? n - i : 1 << 16));
    return gg;
}

typedef double (*vr_adam_fn)(float *, const float *, float *, float *, int64_t, double, double, double, double,
                             int64_t);
#define VR_ADAM_ARGS float *p, const float *g, float *m, float *v, int64_t n, double lr, double b1, double b2, \
                     double eps, int64_t t
static double adam_base(VR_ADAM_ARGS) { return adam_body(p, g, m, v, n, lr, b1, b2, eps, t); }
#if defined(__GNUC__) && !defined(__clang__)
#define VR_ADAM_SCALAR __attribute__((optimize("no-tree-vectorize")))
#else /* clang: its loop vectoriser is told per loop; the baseline's code is what it runs for `scalar` */
#define VR_ADAM_SCALAR
#endif
static VR_ADAM_SCALAR double adam_scalar(VR_ADAM_ARGS) { return adam_body(p, g, m, v, n, lr, b1, b2, eps, t); }
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define VR_ADAM_X86 1
__attribute__((target("avx2,fma"))) static double adam_avx2(VR_ADAM_ARGS) {
    return adam_body(p, g, m, v, n, lr, b1, b2, eps, t);
}
__attribute__((target("avx512f,avx2,fma"))) static double adam_avx512(VR_ADAM_ARGS) {
    return adam_body(p, g, m, v, n, lr, b1, b2, eps, t);
}
#endif
static vr_adam_fn vr_adam; /* NULL until chosen (a benign race: all choose the same) */
static int32_t vr_adam_lanes;

/* Use the Adam step compiled for `lanes` (16 AVX-512F, 8 AVX2+FMA, 4 the baseline, 1 scalar; 0 the CPU's
 * best); returns the lanes in use, or -1 (nothing changes) where this build or CPU has none. */
VR_API int32_t vr_tail_adam_use(int32_t lanes) {
    vr_adam_fn fn = lanes == 0 || lanes == 4 ? adam_base : lanes == 1 ? adam_scalar : NULL;
    int32_t got = lanes == 1 ? 1 : 4;
#ifdef VR_ADAM_X86
    __builtin_cpu_init();
    const int avx512 = __builtin_cpu_supports("avx512f"), avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if ((lanes == 0 || lanes == 8) && avx2) fn = adam_avx2, got = 8;
    if ((lanes == 0 || lanes == 16) && avx512) fn = adam_avx512, got = 16;
    if ((lanes == 8 && !avx2) || (lanes == 16 && !avx512)) fn = NULL;
#else
    if (lanes != 0 && lanes != 1 && lanes != 4) fn = NULL;
#endif
    if (!fn) return -1;
    vr_adam = fn, vr_adam_lanes = got;
    return got;
}

/* The lanes of the Adam step in use (vr_tail_adam_use). */
VR_API int32_t vr_tail_adam_lanes(void) {
    if (!vr_adam) vr_tail_adam_use(0);
    return vr_adam_lanes;
}

VR_API double vr_tail_adam(VR_ADAM_ARGS) {
    if (!vr_adam) vr_tail_adam_use(0);
    return vr_adam(p, g, m, v, n, lr, b1, b2, eps, t);
}
