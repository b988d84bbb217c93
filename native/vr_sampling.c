/*
 * vr_sampling: the per-token arithmetic of vreason-local's decode loop over llama.cpp's logits
 * (151,936 floats for Qwen): argmax + entropy in two passes, and sampling with temperature, top-p and
 * min-p without sorting the vocabulary; and, for V-Reason's updates, every LM-head row's term in the
 * bound on the gradient's error, with the largest ranked (vr_head_terms). Called through ctypes from
 * vreason_local/sampling.py, which has the measurements (vr_head_terms from vreason_local/tail.py).
 *
 * Why C: a decode step of a small model on a fast backend takes 2-3 ms, and entropy is telemetry the
 * loop needs on every token. numpy's float32 formulation makes 6 passes over the array (0.15 ms, 5-7 %
 * of the step); here one pass finds the maximum and its index, one computes the exponentials and both
 * sums (0.04 ms with AVX-512), and nothing is allocated.
 *
 * Vectors: GCC and clang build the kernels on generic vectors (vector_size) as wide as the target's
 * registers, once per target: 4 lanes for the baseline (SSE2 on x86-64, NEON on arm64), and on x86 8
 * for AVX2+FMA and 16 for AVX-512F, chosen at run time from the CPU (no -march flag needed). Generic
 * vectors wider than the registers spill to the stack, hence one width per target, and hence the
 * kernels' section at the end is this same file included once per target, its names suffixed. Every
 * kernel works on VR_U = 4 vectors in lockstep, statement by statement: one vector's exp is a chain of
 * ~15 dependent operations, and only interleaved independent chains keep the units busy (x3).
 * Other compilers (MSVC) build the same code with one-lane "vectors": plain scalar C99, about 15 times
 * slower than AVX-512 (-DVR_SCALAR builds that path with GCC or clang, as the tests did). GCC needs
 * -fno-trapping-math to keep the selects branch-free (setup.py passes it); the arithmetic is IEEE (no
 * fast-math). Results depend on the target only in the last bits of a float (FMA contraction, the
 * lane order of sums).
 */
#ifndef VR_KERNELS /* ======== the library; the kernels' section at the end is included per target ======== */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vr_native.h"

#if (defined(__GNUC__) || defined(__clang__)) && !defined(VR_SCALAR)
#define VR_VECTOR 1
#define VR_INLINE static inline __attribute__((always_inline))
#else
#define VR_INLINE static __inline
#endif

#define VR_U 4 /* vectors per step, in lockstep */
#define VR_EACH(u) for (int u = 0; u < VR_U; u++)
/* ln(FLT_MIN): below it e^z is flushed to 0 (it would be subnormal), a change of < 1e-30 in any sum. */
#define VR_LOW (-87.33654f)

/* Radix levels of top-p's cut over the bits of an e in [0, 2) (bits 31 and 30 are 0): */
#define VR_CUT_BITS0 11u  /* bits 29..19: exponent and 4 mantissa bits, buckets 6 % wide */
#define VR_CUT_SHIFT0 19u
#define VR_CUT_BITS1 10u  /* bits 18..9 */
#define VR_CUT_BITS2 9u   /* bits 8..0 */
/* Radix levels of the LM-head terms' ranking over the 31 bits of a term >= 0: */
#define VR_RANK_BITS0 11u /* bits 30..20 */
#define VR_RANK_BITS1 10u /* bits 19..10 */
#define VR_RANK_BITS2 10u /* bits 9..0 */
#define VR_CUT_WAYS 4u    /* histograms: value k adds to k % 4, so equal neighbours do not queue on one bucket */

static uint32_t float_bits(float x) { uint32_t b; memcpy(&b, &x, sizeof b); return b; }
static float bits_float(uint32_t b) { float x; memcpy(&x, &b, sizeof x); return x; }

typedef struct {
    int64_t (*argmax_entropy)(const float *, int64_t, double *);
    double (*softmax)(const float *, int64_t, float, float, float *);
    int64_t (*draw)(const float *, int64_t, float, double);
    int64_t (*collect)(const float *, int64_t, float, int32_t *, double *);
    double (*terms)(const float *, const float *, int64_t, float *, double *);
} vr_kernels;

#define VR_KERNELS base
#define VR_TARGET
#ifdef VR_VECTOR
#define VR_W 4
#else
#define VR_W 1
#endif
#include "vr_sampling.c"
#undef VR_KERNELS
#undef VR_TARGET
#undef VR_W

#ifdef VR_VECTOR /* the same code on plain floats, as MSVC and -DVR_SCALAR build it, for VREASON_SIMD=scalar */
#define VR_KERNELS scalar
#define VR_TARGET
#define VR_W 1
#include "vr_sampling.c"
#undef VR_KERNELS
#undef VR_TARGET
#undef VR_W
#endif

#if defined(VR_VECTOR) && (defined(__x86_64__) || defined(__i386__))
#define VR_X86_DISPATCH 1
#define VR_KERNELS avx2
#define VR_TARGET __attribute__((target("avx2,fma")))
#define VR_W 8
#include "vr_sampling.c"
#undef VR_KERNELS
#undef VR_TARGET
#undef VR_W
#define VR_KERNELS avx512
#define VR_TARGET __attribute__((target("avx512f,avx2,fma")))
#define VR_W 16
#include "vr_sampling.c"
#undef VR_KERNELS
#undef VR_TARGET
#undef VR_W
#endif

/* ---- dispatch ---- */

#ifdef VR_VECTOR
#define VR_BASE_LANES 4
#else
#define VR_BASE_LANES 1
#endif

static const vr_kernels *vr_chosen; /* set once; a benign race: every thread picks the same table */

static const vr_kernels *best_kernels(void) {
#ifdef VR_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return &kernels_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &kernels_avx2;
#endif
    return &kernels_base;
}

static const vr_kernels *kernels(void) {
    if (!vr_chosen) vr_chosen = best_kernels();
    return vr_chosen;
}

/* Which kernels run: the lanes of their vectors (16 AVX-512F, 8 AVX2+FMA, 4 SSE2 or NEON, 1 scalar). */
VR_API int32_t vr_sampling_lanes(void) {
#ifdef VR_X86_DISPATCH
    if (kernels() == &kernels_avx512) return 16;
    if (kernels() == &kernels_avx2) return 8;
#endif
#ifdef VR_VECTOR
    if (kernels() == &kernels_scalar) return 1;
#endif
    return VR_BASE_LANES;
}

/* Run the kernels of `lanes` lanes from now on (0: the CPU's best), so that tests can check every
 * kernel this CPU can run against the same references. Returns the lanes in use, or -1 if this build
 * or CPU has no such kernels (nothing changes then). */
VR_API int32_t vr_sampling_use(int32_t lanes) {
    const vr_kernels *k = lanes == 0 ? best_kernels() : lanes == VR_BASE_LANES ? &kernels_base : NULL;
#ifdef VR_VECTOR
    if (lanes == 1) k = &kernels_scalar;
#endif
#ifdef VR_X86_DISPATCH
    __builtin_cpu_init();
    if (lanes == 8 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) k = &kernels_avx2;
    if (lanes == 16 && __builtin_cpu_supports("avx512f")) k = &kernels_avx512;
#endif
    if (!k) return -1;
    vr_chosen = k;
    return vr_sampling_lanes();
}

/* Walks the buckets of the VR_CUT_WAYS histograms of n_buckets each from the top: the first bucket
 * whose mass takes *above to `target` (the lowest non-empty one when rounding leaves target out of
 * reach), adding the mass of the buckets above it to *above. */
static uint32_t cut_bucket(const double *hist, uint32_t n_buckets, double target, double *above) {
    uint32_t last = 0;
    double last_mass = 0.0;
    for (uint32_t j = n_buckets; j-- > 0;) {
        double mass = 0.0;
        for (uint32_t w = 0; w < VR_CUT_WAYS; w++) mass += hist[w * n_buckets + j];
        if (mass <= 0.0) continue;
        if (*above + mass >= target) return j;
        *above += mass;
        last = j, last_mass = mass;
    }
    *above -= last_mass;
    return last;
}

/* Index of the largest logit (the first, on ties) and, in *entropy, the entropy in nats of
 * softmax(logits). The largest logit must be finite; -inf entries count as probability 0. */
VR_API int64_t vr_argmax_entropy(const float *logits, int64_t n, double *entropy) {
    return kernels()->argmax_entropy(logits, n, entropy);
}

/* e_i = exp((logits_i - max) * inv_t), i.e. softmax(logits / T) / p_max, into e; returns sum(e). */
VR_API double vr_softmax(const float *logits, int64_t n, float max, float inv_t, float *e) {
    return kernels()->softmax(logits, n, max, inv_t, e);
}

/* A token i with e_i >= c, drawn with probability e_i / sum(e_j >= c) at u in [0, 1); -1 if none. */
VR_API int64_t vr_draw(const float *e, int64_t n, float c, double u) { return kernels()->draw(e, n, c, u); }

/* Doubles of scratch vr_nucleus_cut needs in `hist`. */
VR_API int64_t vr_nucleus_hist_size(void) { return (int64_t)VR_CUT_WAYS << VR_CUT_BITS0; }

/* Top-p's cut for e in [0, 1] summing to `total`: the largest value c among the e_i such that the
 * e_i >= c carry at least `target`; top-p keeps {e_i >= c}. Exact (it returns one of the e_i).
 * Only values above (total - target) / n can be the cut (n values at most that small carry less than
 * the total - target that the cut leaves out), so only those are collected (or, first, only those
 * above 1e-3, if they carry the target); then their bits are histogrammed by mass, 11, 10 and 9 bits
 * at a time, each level keeping the candidates in the bucket the cut falls in (without branches:
 * whether a value stays is a coin toss in broad distributions). ids: n int32 of scratch; hist:
 * vr_nucleus_hist_size() doubles of scratch. */
VR_API float vr_nucleus_cut(const float *e, int64_t n, double total, double target, int32_t *ids, double *hist) {
    const uint32_t widths[3] = {VR_CUT_BITS0, VR_CUT_BITS1, VR_CUT_BITS2};
    const float lo = (float)((total - target) / (double)n * (1.0 - 1e-6)), guess = 1e-3f;
    uint32_t prefix = 0, shift = VR_CUT_SHIFT0;
    double above = 0.0;
    /* First the e_i >= 1e-3 (p >= p_max / 1000): few, and they hold the cut unless p is broad. */
    memset(hist, 0, sizeof(double) * VR_CUT_WAYS << VR_CUT_BITS0);
    int64_t m = kernels()->collect(e, n, lo > guess ? lo : guess, ids, hist);
    if (lo < guess) {
        double mass = 0.0;
        for (uint32_t j = 0; j < VR_CUT_WAYS << VR_CUT_BITS0; j++) mass += hist[j];
        if (mass < target) {
            memset(hist, 0, sizeof(double) * VR_CUT_WAYS << VR_CUT_BITS0);
            m = kernels()->collect(e, n, lo, ids, hist);
        }
    }
    for (int level = 0; level < 3; level++) {
        uint32_t w = widths[level];
        if (level > 0) { /* histogram the candidates left by their next bits */
            shift -= w;
            memset(hist, 0, sizeof(double) * VR_CUT_WAYS << w);
            for (int64_t k = 0; k < m; k++)
                hist[((uint32_t)k % VR_CUT_WAYS << w) + (float_bits(e[ids[k]]) >> shift & ((1u << w) - 1u))] += e[ids[k]];
        }
        prefix = prefix << w | cut_bucket(hist, 1u << w, target, &above);
        if (level == 2) break;
        int64_t kept = 0;
        for (int64_t k = 0; k < m; k++) {
            ids[kept] = ids[k];
            kept += float_bits(e[ids[k]]) >> shift == prefix;
        }
        m = kept;
    }
    return bits_float(prefix);
}

/* A term's rank key: its bits without the sign's (terms are >= 0, where float order is the bits' order). */
static uint32_t term_key(float x) { return float_bits(x) & 0x7fffffffu; }

/* One pass of a stable LSD radix sort by `bits` bits of the keys from `shift` on, in decreasing order. */
static void radix_pass(const uint32_t *key, const int32_t *id, uint32_t *key_out, int32_t *id_out, int64_t m,
                       uint32_t shift, uint32_t bits) {
    int64_t start[1u << VR_RANK_BITS0];
    const uint32_t mask = (1u << bits) - 1u;
    memset(start, 0, sizeof(int64_t) << bits);
    for (int64_t j = 0; j < m; j++) start[key[j] >> shift & mask]++;
    int64_t at = 0;
    for (uint32_t b = 1u << bits; b-- > 0;) { /* the highest digit first */
        int64_t c = start[b];
        start[b] = at;
        at += c;
    }
    for (int64_t j = 0; j < m; j++) {
        int64_t to = start[key[j] >> shift & mask]++;
        key_out[to] = key[j], id_out[to] = id[j];
    }
}

/* V-Reason's LM-head restriction at llama.cpp's logits (vreason_local/tail.py, AnchorWeights): with
 * p = softmax(logits), H its entropy and l_v = ln p_v + H, the term t_v = norms_v·p_v·|l_v| of every
 * row into t (n floats), and the ids of the k largest terms into ids, in decreasing order of term (on
 * ties the lower id first); stats[0] = ln sum(e^logits), stats[1] = H, stats[2] = sum(t). Returns how
 * many ids (k, at most n), or -1 if out of memory. Three vectorised passes for the terms (as
 * vr_argmax_entropy), then a radix select: a histogram of the terms' top bits finds the bucket of the
 * k-th largest, the terms from that bucket up (a few more than k) are collected in id order and sorted
 * by a stable radix sort (no compare-based sort): ~0.15 ms at 151,936 tokens and k = 2,048, where a
 * heap of the k ids took 0.9 ms and numpy's argpartition 0.3. */
VR_API int64_t vr_head_terms(const float *logits, const float *norms, int64_t n, int64_t k, float *t, int64_t *ids,
                             double *stats) {
    stats[2] = kernels()->terms(logits, norms, n, t, stats);
    if (k > n) k = n;
    if (k <= 0) return 0;
    const uint32_t top_shift = 31u - VR_RANK_BITS0, n_buckets = 1u << VR_RANK_BITS0;
    uint32_t count[VR_CUT_WAYS][1u << VR_RANK_BITS0] = {{0}}; /* term i counts in way i % 4: no queue on one bucket */
    for (int64_t i = 0; i < n; i++) count[i % VR_CUT_WAYS][term_key(t[i]) >> top_shift]++;
    uint32_t edge = n_buckets;
    int64_t m = 0;
    while (edge-- > 0) {
        for (uint32_t w = 0; w < VR_CUT_WAYS; w++) m += count[w][edge];
        if (m >= k) break;
    }
    /* calloc: GCC 12 warns (-Wmaybe-uninitialized) that radix_pass may read them before they are written */
    uint32_t *key = calloc(2 * (size_t)(m + 1), sizeof(uint32_t));
    int32_t *id = calloc(2 * (size_t)(m + 1), sizeof(int32_t));
    if (!key || !id) {
        free(key), free(id);
        return -1;
    }
    int64_t j = 0;
    for (int64_t i = 0; i < n && j < m; i++) { /* without a branch: whether a term is in is a coin toss */
        key[j] = term_key(t[i]), id[j] = (int32_t)i;
        j += key[j] >> top_shift >= edge;
    }
    radix_pass(key, id, key + m + 1, id + m + 1, m, 0, VR_RANK_BITS2);
    radix_pass(key + m + 1, id + m + 1, key, id, m, VR_RANK_BITS2, VR_RANK_BITS1);
    radix_pass(key, id, key + m + 1, id + m + 1, m, VR_RANK_BITS2 + VR_RANK_BITS1, VR_RANK_BITS0);
    for (j = 0; j < k; j++) ids[j] = id[m + 1 + j];
    free(key), free(id);
    return k;
}

#else /* ======== kernels: VR_W lanes, compiled for VR_TARGET, names suffixed with _VR_KERNELS ======== */
#define VR_CAT_(a, b) a##_##b
#define VR_CAT(a, b) VR_CAT_(a, b)
#define VR_K(name) VR_CAT(name, VR_KERNELS)
#define VR_FN VR_TARGET VR_INLINE
#define VR_STEP (VR_U * VR_W)  /* values per step */
#define VR_BLOCK (4 * VR_STEP) /* values per block: float sums are flushed to double per block */
#define vf VR_K(vf)
#define vi VR_K(vi)
#define vload VR_K(vload)
#define vsplat VR_K(vsplat)
#define as_i VR_K(as_i)
#define as_f VR_K(as_f)
#define vsel VR_K(vsel)
#define vneg VR_K(vneg)
#define any_lane VR_K(any_lane)
#define vsum VR_K(vsum)
#define vsum4 VR_K(vsum4)
#define load_step VR_K(load_step)
#define store_step VR_K(store_step)
#define vexp_step VR_K(vexp_step)
#define argmax_index VR_K(argmax_index)
#define entropy_range VR_K(entropy_range)
#define kept_block_sum VR_K(kept_block_sum)

#if defined(VR_VECTOR) && VR_W > 1
typedef float vf __attribute__((vector_size(4 * VR_W)));
typedef int32_t vi __attribute__((vector_size(4 * VR_W)));
#define VR_TOI(x) __builtin_convertvector((x), vi)
#else
typedef float vf;
typedef int32_t vi;
#define VR_TOI(x) ((int32_t)(x))
#endif

VR_FN vf vload(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
VR_FN vf vsplat(float x) { vf v; for (int j = 0; j < VR_W; j++) memcpy((float *)&v + j, &x, sizeof x); return v; }
VR_FN vi as_i(vf x) { vi r; memcpy(&r, &x, sizeof r); return r; }
VR_FN vf as_f(vi x) { vf r; memcpy(&r, &x, sizeof r); return r; }
VR_FN vf vsel(vi m, vf a, vf b) { return as_f((as_i(a) & m) | (as_i(b) & ~m)); }
/* -1 in the lanes where x's sign bit is set (x < 0, -0, -inf, the default NaN), else 0: a compare
 * without a compare instruction. GCC scalarises vector compares that the target cannot do natively and
 * keeps float compares out of branch-free code under trapping math; an arithmetic shift right (what
 * every supported compiler does with a negative int) has neither problem. */
VR_FN vi vneg(vf x) { return as_i(x) >> 31; }

VR_FN int32_t any_lane(vi m) {
    int32_t lanes[VR_W], any = 0;
    memcpy(lanes, &m, sizeof lanes);
    for (int j = 0; j < VR_W; j++) any |= lanes[j];
    return any;
}

VR_FN double vsum(vf v) {
    float a[VR_W];
    double s = 0.0;
    memcpy(a, &v, sizeof a);
    for (int j = 0; j < VR_W; j++) s += a[j];
    return s;
}

/* Each float lane of a block sum adds 4 terms per accumulator, then the accumulators pairwise: its
 * rounding error is at most 6 * 2^-24 relative (all terms have one sign); blocks add up in double. */
VR_FN double vsum4(const vf *a) { return vsum((a[0] + a[1]) + (a[2] + a[3])); }

/* The step of values x[i .. i + VR_STEP) into v, those at or past n replaced by `pad`. */
VR_FN void load_step(vf *v, const float *x, int64_t i, int64_t n, float pad) {
    if (n - i >= VR_STEP) {
        VR_EACH(u) v[u] = vload(x + i + u * VR_W);
        return;
    }
    float buf[VR_STEP];
    for (int j = 0; j < VR_STEP; j++) buf[j] = i + j < n ? x[i + j] : pad;
    VR_EACH(u) v[u] = vload(buf + u * VR_W);
}

VR_FN void store_step(float *x, int64_t i, int64_t n, const vf *v) {
    if (n - i >= VR_STEP) {
        VR_EACH(u) memcpy(x + i + u * VR_W, &v[u], sizeof v[u]);
        return;
    }
    float buf[VR_STEP];
    VR_EACH(u) memcpy(buf + u * VR_W, &v[u], sizeof v[u]);
    memcpy(x + i, buf, (size_t)(n - i) * sizeof(float));
}

/* e = e^z for z <= 0, flushed to 0 below VR_LOW; zc = z clamped to VR_LOW (finite for -inf logits,
 * so e * zc is 0 there, not nan). Cody-Waite reduction z = k ln2 + r with |r| <= ln2 / 2, Cephes'
 * degree-6 polynomial (about 1 ulp), 2^k from the exponent bits (k in [-126, 0]: a normal float). */
VR_FN void vexp_step(const vf *z, vf *zc, vf *e) {
    vi low[VR_U];
    vf k[VR_U], r[VR_U], p[VR_U];
    VR_EACH(u) low[u] = vneg(z[u] - VR_LOW);
    VR_EACH(u) zc[u] = vsel(low[u], vsplat(VR_LOW), z[u]);
    VR_EACH(u) k[u] = (zc[u] * 1.44269504f + 12582912.0f) - 12582912.0f; /* 1.5 * 2^23 rounds to integers */
    VR_EACH(u) r[u] = (zc[u] - k[u] * 0.693359375f) + k[u] * 2.12194440e-4f;
    VR_EACH(u) p[u] = r[u] * 1.9875691500e-4f + 1.3981999507e-3f;
    VR_EACH(u) p[u] = p[u] * r[u] + 8.3334519073e-3f;
    VR_EACH(u) p[u] = p[u] * r[u] + 4.1665795894e-2f;
    VR_EACH(u) p[u] = p[u] * r[u] + 1.6666665459e-1f;
    VR_EACH(u) p[u] = p[u] * r[u] + 5.0000001201e-1f;
    VR_EACH(u) p[u] = p[u] * r[u] * r[u] + r[u] + 1.0f;
    VR_EACH(u) e[u] = as_f(as_i(p[u] * as_f((VR_TOI(k[u]) + 127) << 23)) & ~low[u]);
}

/* ---- argmax: one pass, per-lane maximum and its first index ---- */

VR_FN int64_t argmax_index(const float *l, int64_t n) {
    vf mx[VR_U], v[VR_U];
    vi ix[VR_U], cur;
    int32_t iota[VR_W];
    for (int j = 0; j < VR_W; j++) iota[j] = j;
    memcpy(&cur, iota, sizeof cur);
    VR_EACH(u) mx[u] = vsplat(-INFINITY), ix[u] = as_i(vsplat(0.0f));
    for (int64_t i = 0; i < n; i += VR_STEP, cur += VR_STEP) {
        load_step(v, l, i, n, -INFINITY);
        VR_EACH(u) {
            vi gt = vneg(mx[u] - v[u]); /* v > mx; exact: x - y is 0 only when x == y */
            mx[u] = vsel(gt, v[u], mx[u]);
            ix[u] = (gt & (cur + u * VR_W)) | (ix[u] & ~gt);
        }
    }
    int64_t best = 0;
    float bm = -INFINITY;
    VR_EACH(u) {
        float m[VR_W];
        int32_t at[VR_W];
        memcpy(m, &mx[u], sizeof m);
        memcpy(at, &ix[u], sizeof at);
        for (int j = 0; j < VR_W; j++)
            if (m[j] > bm || (m[j] == bm && at[j] < best)) bm = m[j], best = at[j];
    }
    return best;
}

/* ---- entropy: H = log(1 + r) - d / (1 + r), r = sum e^z and d = sum z e^z over i != top ---- */

/* Adds the sums over [a, b) to *r and *d. */
VR_FN void entropy_range(const float *l, int64_t a, int64_t b, float m, double *r, double *d) {
    vf v[VR_U], zc[VR_U], e[VR_U], er[VR_U], ed[VR_U];
    for (; a < b; a += VR_BLOCK) {
        VR_EACH(u) er[u] = ed[u] = vsplat(0.0f);
        for (int64_t i = a; i < b && i < a + VR_BLOCK; i += VR_STEP) {
            load_step(v, l, i, b, -INFINITY);
            VR_EACH(u) v[u] -= m;
            vexp_step(v, zc, e);
            VR_EACH(u) er[u] += e[u], ed[u] += e[u] * zc[u];
        }
        *r += vsum4(er);
        *d += vsum4(ed);
    }
}

VR_TARGET static int64_t VR_K(argmax_entropy)(const float *l, int64_t n, double *h) {
    int64_t top = argmax_index(l, n);
    double r = 0.0, d = 0.0;
    /* The top token (e = 1, z = 0) is left out of r: in 1 + r, float would lose a peaked r entirely. */
    entropy_range(l, 0, top, l[top], &r, &d);
    entropy_range(l, top + 1, n, l[top], &r, &d);
    *h = log1p(r) - d / (1.0 + r);
    return top;
}

/* ---- e_i = exp((l_i - max) * inv_t) into e; returns their sum ---- */

VR_TARGET static double VR_K(softmax)(const float *l, int64_t n, float m, float inv_t, float *e) {
    vf v[VR_U], zc[VR_U], x[VR_U], acc[VR_U];
    double s = 0.0;
    for (int64_t a = 0; a < n; a += VR_BLOCK) {
        VR_EACH(u) acc[u] = vsplat(0.0f);
        for (int64_t i = a; i < n && i < a + VR_BLOCK; i += VR_STEP) {
            load_step(v, l, i, n, -INFINITY);
            VR_EACH(u) v[u] = (v[u] - m) * inv_t;
            vexp_step(v, zc, x);
            store_step(e, i, n, x);
            VR_EACH(u) acc[u] += x[u];
        }
        s += vsum4(acc);
    }
    return s;
}

/* ---- V-Reason's LM-head terms: t_v = w_v·p_v·|ln p_v + H|, p = softmax(l) ---- */

/* Fills t and returns sum(t); stats[0] = ln sum(e^l), stats[1] = H (nats). */
VR_TARGET static double VR_K(terms)(const float *l, const float *w, int64_t n, float *t, double *stats) {
    int64_t top = argmax_index(l, n);
    const float m = l[top];
    double r = 0.0, d = 0.0;
    entropy_range(l, 0, top, m, &r, &d);
    entropy_range(l, top + 1, n, m, &r, &d);
    const double log_total = log1p(r);
    stats[0] = m + log_total;
    stats[1] = log_total - d / (1.0 + r);
    const float c = (float)log_total, h = (float)stats[1];
    const vi magnitude = ~as_i(vsplat(-0.0f)); /* all bits but the sign's */
    vf v[VR_U], zc[VR_U], e[VR_U], x[VR_U], acc[VR_U];
    double s = 0.0;
    for (int64_t a = 0; a < n; a += VR_BLOCK) {
        VR_EACH(u) acc[u] = vsplat(0.0f);
        for (int64_t i = a; i < n && i < a + VR_BLOCK; i += VR_STEP) {
            load_step(v, l, i, n, -INFINITY);
            VR_EACH(u) v[u] = (v[u] - m) - c; /* ln p <= 0 */
            vexp_step(v, zc, e);
            load_step(x, w, i, n, 0.0f);
            VR_EACH(u) x[u] = x[u] * e[u] * as_f(as_i(zc[u] + h) & magnitude);
            store_step(t, i, n, x);
            VR_EACH(u) acc[u] += x[u];
        }
        s += vsum4(acc);
    }
    return s;
}

/* ---- draw: inverse CDF over the e_i >= c, block sums first, then one block value by value ---- */

VR_FN double kept_block_sum(const float *e, int64_t a, int64_t n, float c) {
    vf v[VR_U], acc[VR_U];
    VR_EACH(u) acc[u] = vsplat(0.0f);
    for (int64_t i = a; i < n && i < a + VR_BLOCK; i += VR_STEP) {
        load_step(v, e, i, n, 0.0f);
        VR_EACH(u) acc[u] += as_f(as_i(v[u]) & ~vneg(v[u] - c));
    }
    return vsum4(acc);
}

VR_TARGET static int64_t VR_K(draw)(const float *e, int64_t n, float c, double u) {
    double total = 0.0, before = 0.0, last_before = 0.0;
    int64_t a, last = -1;
    for (a = 0; a < n; a += VR_BLOCK) total += kept_block_sum(e, a, n, c);
    double target = u * total;
    for (a = 0; a < n; a += VR_BLOCK) {
        double here = kept_block_sum(e, a, n, c);
        if (here > 0.0) {
            last = a, last_before = before;
            if (before + here > target) break;
        }
        before += here;
    }
    if (a >= n) { /* rounding put the target at the very end: the last block with mass */
        if (last < 0) return -1;
        a = last, before = last_before;
    }
    int64_t pick = -1;
    for (int64_t i = a; i < n && i < a + VR_BLOCK; i++) {
        if (!(e[i] >= c) || e[i] <= 0.0f) continue;
        pick = i;
        before += e[i];
        if (before > target) break;
    }
    return pick;
}

/* ---- top-p's candidates ---- */

/* The ids of the e_i >= lo, and their level-0 mass histograms (VR_CUT_WAYS of 2^VR_CUT_BITS0 each,
 * zeroed by the caller); returns how many. A step, then a vector, without a candidate costs one test;
 * in the others every value is stored and counted without a branch (whether a value is a candidate is
 * a coin toss in broad distributions), and value k adds to histogram k % VR_CUT_WAYS, so that runs of
 * equal values do not wait on one bucket. ids needs room for n. */
VR_TARGET static int64_t VR_K(collect)(const float *e, int64_t n, float lo, int32_t *ids, double *hist) {
    vf v[VR_U];
    int64_t m = 0;
    for (int64_t i = 0; i < n; i += VR_STEP) {
        vi ge[VR_U];
        load_step(v, e, i, n, 0.0f);
        VR_EACH(u) ge[u] = ~vneg(v[u] - lo);
        if (!any_lane((ge[0] | ge[1]) | (ge[2] | ge[3]))) continue;
        VR_EACH(u) {
            if (!any_lane(ge[u])) continue;
            for (int64_t k = i + u * VR_W; k < n && k < i + (u + 1) * VR_W; k++) {
                uint32_t bits = float_bits(e[k]), keep = e[k] >= lo;
                ids[m] = (int32_t)k;
                hist[((uint32_t)k % VR_CUT_WAYS << VR_CUT_BITS0) + (bits >> VR_CUT_SHIFT0 & ((1u << VR_CUT_BITS0) - 1u))] +=
                    bits_float(bits & (0u - keep));
                m += keep;
            }
        }
    }
    return m;
}

static const vr_kernels VR_K(kernels) = {
    VR_K(argmax_entropy), VR_K(softmax), VR_K(draw), VR_K(collect), VR_K(terms),
};

#undef VR_CAT_
#undef VR_CAT
#undef VR_K
#undef VR_FN
#undef VR_STEP
#undef VR_BLOCK
#undef VR_TOI
#undef vf
#undef vi
#undef vload
#undef vsplat
#undef as_i
#undef as_f
#undef vsel
#undef vneg
#undef any_lane
#undef vsum
#undef vsum4
#undef load_step
#undef store_step
#undef vexp_step
#undef argmax_index
#undef entropy_range
#undef kept_block_sum
#endif
