/*
 * vr_rows: products with the rows of a GGUF matrix where they lie, in the file's own quantisation.
 *
 * V-Reason's update multiplies by the last layer's FFN matrices transposed (Wᵀ·g, the backward) and by
 * a few thousand rows of the LM head. Copies in a torch-friendly form (int8, float32 rows) cost memory
 * that the base model does not pay: 183 MB for a 3B model's FFN in int8, both orientations, and a
 * float32 ring of head rows. Here the products read the rows where llama.cpp holds them (or the file's
 * mapping), dequantising as they go:
 *   - vr_rows_axpy: out += Σ_i coef_i · W[row_i]   (Wᵀ·g over the stored rows: each row is one input)
 *   - vr_rows_dot:  out_i = W[row_i] · x            (W·x)
 * each shared across OpenMP's threads (the team llama.cpp and torch also run on): Wᵀ·g by ranges of
 * columns, so that no partial sums are added and each output is summed in the same order on any number
 * of threads; W·x by ranges of rows.
 * for F32, F16, Q8_0 and the K-quants of the registry's Q4_K_M files (Q4_K, Q6_K), laid out as ggml's
 * block_q8_0, block_q4_K and block_q6_K (ggml-common.h) and dequantised as ggml's dequantize_row_*
 * does (the tests compare them with ggml's own). Other types answer -1: the caller keeps a copy.
 *
 * Like vr_sampling.c, this file is included once per target (base, AVX2+FMA+F16C, AVX-512F/BW) with the
 * kernels' names suffixed, the best chosen at run time. The kernels work on generic vectors of W lanes:
 * bytes are widened to int32 lanes (x86 intrinsics there: GCC 12 converts byte vectors a lane at a time
 * otherwise), where K-quants' nibbles and bits are taken apart, converted to floats and multiplied with
 * their block's scale folded into the weight; the blocks' scales are unpacked 4 at a time and converted as
 * vectors. On AVX-512, Q4_K's Wᵀ·g looks its products up instead (axpy_q4k_table); on AVX2, Q6_K's Wᵀ·g
 * assembles its values on bytes, 32 per operation, before they are widened (q6k_bytes). Wᵀ·g takes 4 rows at a
 * time, so that `out` is read and written once per 4 rows. The rows used next are prefetched while the
 * current ones are summed (`ahead`).
 *
 * Measured (one thread, from L2, this 2-core AMD EPYC; Wᵀ·g / W·x in GB/s of the file's bytes): Q4_K
 * 14.8 / 11.3 on AVX-512, 10.8 / 8.7 on AVX2; Q6_K 17.7 / 11.0 and 10.1 / 8.2; Q8_0 24 / 28 and 18 / 24.
 * AVX2's Q6_K Wᵀ·g on bytes took 0.70x the time of that 10.1 code on one thread (10.6 GB/s) and 0.76x on two
 * (17.7 GB/s, as AVX-512's 17.2), 3B's ffn_down (2048 x 11008) from memory.
 * Byte vectors narrower than 16 (AVX2's, the base's) had given 1-4 GB/s for the K-quants.
 */
#ifndef VR_ROWS_KERNELS /* ======== the library; the kernels' section at the end is included per target ======== */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vr_native.h"

#if (defined(__GNUC__) || defined(__clang__)) && !defined(VR_SCALAR)
#define VR_ROWS_VECTOR 1
#define VR_ROWS_INLINE static inline __attribute__((always_inline))
#define VR_RESTRICT __restrict__
#else
#define VR_ROWS_INLINE static __inline
#define VR_RESTRICT __restrict
#endif

#if defined(__GNUC__) || defined(__clang__)
#define VR_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define VR_PREFETCH(p) ((void)(p))
#endif
#define VR_DOT_AHEAD 4 /* vr_rows_dot prefetches the row this many rows ahead */

/* ggml's type numbers (ggml.h) and block sizes (ggml-common.h) */
enum { VR_F32 = 0, VR_F16 = 1, VR_Q8_0 = 8, VR_Q4_K = 12, VR_Q6_K = 14 };
#define VR_QK_K 256
#define VR_Q8_0_BYTES 34   /* f16 d, int8 qs[32] */
#define VR_Q4_K_BYTES 144  /* f16 d, f16 dmin, uint8 scales[12], uint8 qs[128] */
#define VR_Q6_K_BYTES 210  /* uint8 ql[128], uint8 qh[64], int8 scales[16], f16 d */

static float half_float(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, bits;
    if (e == 0) { /* zero or subnormal: m · 2^-24 */
        float f = (float)m * (1.0f / 16777216.0f);
        return sign ? -f : f;
    }
    bits = e == 31 ? sign | 0x7f800000u | m << 13 : sign | (e + 112) << 23 | m << 13;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* A Q4_K block's 6-bit sub-block scales sc[0..7] and mins m[0..7], unpacked from their 12 bytes at `q` into
 * out[0..8) and out[8..16): ggml's get_scale_min_k4, 4 at a time in 32-bit words as ggml's x86 code does
 * (byte by byte, this took as long as the block's products in the AVX-512 kernel). */
static void q4k_unpack(const uint8_t *q, uint8_t *out) {
    uint32_t u[4];
    memcpy(u, q, 12);
    u[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4); /* m[4..7] */
    const uint32_t m03 = u[1] & 0x3f3f3f3fu;                                 /* m[0..3] */
    u[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);        /* sc[4..7] */
    u[2] = m03;
    u[0] &= 0x3f3f3f3fu; /* sc[0..3] */
    memcpy(out, u, 16);
}

/* The column of the value the AVX-512 Q4_K kernel (axpy_q4k_table) sums at position p of its own order:
 * per block of 256 values and per 32-byte chunk j (values l of sub-blocks 2j and 2j+1), 4 vectors t of 16,
 * lane i < 8 holding value 4i + 2(t % 2) of sub-block 2j + t / 2 and lane 8 + i the value after it. Only
 * x86 builds have that kernel (unused elsewhere, this would be a warning). */
#if defined(VR_ROWS_VECTOR) && (defined(__x86_64__) || defined(__i386__))
static int64_t q4k_table_column(int64_t p) {
    const int64_t blk = p / 256, j = p % 256 / 64, t = p % 64 / 16, lane = p % 16;
    return blk * 256 + 32 * (2 * j + t / 2) + 4 * (lane % 8) + 2 * (t % 2) + lane / 8;
}
#endif

typedef struct {
    void (*axpy)(int32_t, const uint8_t *, int64_t, int64_t, const int64_t *, int64_t, int64_t, const float *,
                 float *);
    void (*dot)(int32_t, const uint8_t *, int64_t, int64_t, const int64_t *, int64_t, int64_t, const float *,
                float *);
} vr_rows_kernels;

#define VR_ROWS_KERNELS base
#define VR_ROWS_TARGET
#ifdef VR_ROWS_VECTOR
#define VR_ROWS_W 4
#else
#define VR_ROWS_W 1
#endif
#include "vr_rows.c"
#undef VR_ROWS_KERNELS
#undef VR_ROWS_TARGET
#undef VR_ROWS_W

#ifdef VR_ROWS_VECTOR /* the same code on plain scalars, as MSVC and -DVR_SCALAR build it, for VREASON_SIMD=scalar */
#define VR_ROWS_KERNELS scalar
#define VR_ROWS_TARGET
#define VR_ROWS_W 1
#include "vr_rows.c"
#undef VR_ROWS_KERNELS
#undef VR_ROWS_TARGET
#undef VR_ROWS_W
#endif

#if defined(VR_ROWS_VECTOR) && (defined(__x86_64__) || defined(__i386__))
#define VR_ROWS_X86 1
#include <immintrin.h>
#define VR_ROWS_KERNELS avx2
#define VR_ROWS_TARGET __attribute__((target("avx2,fma,f16c")))
#define VR_ROWS_W 8
#define VR_ROWS_ISA 256
#include "vr_rows.c"
#undef VR_ROWS_KERNELS
#undef VR_ROWS_TARGET
#undef VR_ROWS_W
#undef VR_ROWS_ISA
#define VR_ROWS_KERNELS avx512
#define VR_ROWS_TARGET __attribute__((target("avx512f,avx512bw,avx2,fma,f16c")))
#define VR_ROWS_W 16
#define VR_ROWS_ISA 512
#include "vr_rows.c"
#undef VR_ROWS_KERNELS
#undef VR_ROWS_TARGET
#undef VR_ROWS_W
#undef VR_ROWS_ISA
#endif

#ifdef VR_ROWS_VECTOR
#define VR_ROWS_BASE_LANES 4
#else
#define VR_ROWS_BASE_LANES 1
#endif

static const vr_rows_kernels *vr_rows_chosen; /* set once; a benign race: every thread picks the same */

/* The kernels of `lanes` lanes (0: the CPU's best), NULL if this build or CPU has none. */
static const vr_rows_kernels *rows_kernels_of(int32_t lanes) {
#ifdef VR_ROWS_X86
    __builtin_cpu_init();
    const int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && vr_cpu_f16c();
    if ((lanes == 0 || lanes == 16) && avx512) return &rows_kernels_avx512;
    if ((lanes == 0 || lanes == 8) && avx2) return &rows_kernels_avx2;
#endif
#ifdef VR_ROWS_VECTOR
    if (lanes == 1) return &rows_kernels_scalar;
#endif
    return lanes == 0 || lanes == VR_ROWS_BASE_LANES ? &rows_kernels_base : NULL;
}

static const vr_rows_kernels *rows_kernels(void) {
    if (!vr_rows_chosen) vr_rows_chosen = rows_kernels_of(0);
    return vr_rows_chosen;
}

/* The lanes of the kernels in use (16 AVX-512, 8 AVX2, 4 SSE2 or NEON, 1 scalar build). */
VR_API int32_t vr_rows_lanes(void) {
    const vr_rows_kernels *k = rows_kernels();
#ifdef VR_ROWS_X86
    if (k == &rows_kernels_avx512) return 16;
    if (k == &rows_kernels_avx2) return 8;
#endif
#ifdef VR_ROWS_VECTOR
    if (k == &rows_kernels_scalar) return 1;
#endif
    return k == &rows_kernels_base ? VR_ROWS_BASE_LANES : -1;
}

/* Use the kernels of `lanes` lanes from now on (0: the CPU's best), so that tests check each kernel this
 * CPU runs against the same references. Returns the lanes in use, or -1 (nothing changes) if none. */
VR_API int32_t vr_rows_use(int32_t lanes) {
    const vr_rows_kernels *k = rows_kernels_of(lanes);
    if (!k) return -1;
    vr_rows_chosen = k;
    return vr_rows_lanes();
}

/* Values per block of a type these kernels read, 0 for the others. */
VR_API int32_t vr_rows_block(int32_t type) {
    switch (type) {
    case VR_F32: case VR_F16: return 1;
    case VR_Q8_0: return 32;
    case VR_Q4_K: case VR_Q6_K: return VR_QK_K;
    default: return 0;
    }
}

/* Bytes of one block of a type the kernels read (vr_rows_block values). */
static int64_t block_bytes(int32_t type) {
    switch (type) {
    case VR_Q4_K: return VR_Q4_K_BYTES;
    case VR_Q6_K: return VR_Q6_K_BYTES;
    case VR_Q8_0: return VR_Q8_0_BYTES;
    case VR_F16: return 2;
    default: return 4;
    }
}

/* Whether the products below share their work across threads (an OpenMP build), or run it serially. */
VR_API int32_t vr_rows_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* out[0..n_cols) += Σ_{i < n} coef[i] · W[r_i], r_i = ids ? ids[i] : i: W's rows of `row_bytes` bytes at
 * `data`, n_cols values each, of ggml type `type`; rows whose coef is 0 are not read. Returns 0, or -1 for
 * a type it cannot read. On `threads` threads of OpenMP's team, each summing its own range of columns
 * (whole blocks) for all rows: no partial sums to add, and each thread's part of `out` stays in its
 * cache. The team is the one llama.cpp and torch run on (the same libgomp), so the threads are warm and
 * none is left spinning beside them (Python threads were: measured 1.6x slower in an update). */
VR_API int32_t vr_rows_axpy(int32_t type, const void *data, int64_t row_bytes, int64_t n_cols, const int64_t *ids,
                            int64_t n, const float *coef, float *out, int32_t threads) {
    const int64_t blk = vr_rows_block(type), bb = block_bytes(type);
    if (!blk || n_cols % blk) return -1;
    const vr_rows_kernels *k = rows_kernels();
    const int64_t nb = n_cols / blk;
    const int32_t parts = threads < 1 ? 1 : threads > nb ? (int32_t)nb : threads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(parts) schedule(static)
#endif
    for (int32_t t = 0; t < parts; t++) {
        const int64_t b0 = nb * t / parts, b1 = nb * (t + 1) / parts;
        k->axpy(type, (const uint8_t *)data + b0 * bb, row_bytes, (b1 - b0) * blk, ids, 0, n, coef, out + b0 * blk);
    }
    return 0;
}

/* out[i] = W[r_i] · x for i < n, W read as vr_rows_axpy reads it, on `threads` threads, each a range of rows. */
VR_API int32_t vr_rows_dot(int32_t type, const void *data, int64_t row_bytes, int64_t n_cols, const int64_t *ids,
                           int64_t n, const float *x, float *out, int32_t threads) {
    if (!vr_rows_block(type) || n_cols % vr_rows_block(type)) return -1;
    const vr_rows_kernels *k = rows_kernels();
    const int32_t parts = threads < 1 ? 1 : threads > n ? (int32_t)(n ? n : 1) : threads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(parts) schedule(static)
#endif
    for (int32_t t = 0; t < parts; t++)
        k->dot(type, (const uint8_t *)data, row_bytes, n_cols, ids, n * t / parts, n * (t + 1) / parts, x, out);
    return 0;
}

#else /* ======== kernels: VR_ROWS_W lanes, compiled for VR_ROWS_TARGET, names suffixed ======== */
#define VR_RCAT_(a, b) a##_##b
#define VR_RCAT(a, b) VR_RCAT_(a, b)
#define VR_R(name) VR_RCAT(name, VR_ROWS_KERNELS)
#define VR_RFN VR_ROWS_TARGET VR_ROWS_INLINE
#define W VR_ROWS_W
#define rvf VR_R(rvf)
#define rvu8 VR_R(rvu8)
#define rvi8 VR_R(rvi8)
#define rvi32 VR_R(rvi32)
#define ld VR_R(ld)
#define st VR_R(st)
#define splat VR_R(splat)
#define hsum VR_R(hsum)
#define i8f VR_R(i8f)
#define u8i VR_R(u8i)
#define i2f VR_R(i2f)
#define h2f VR_R(h2f)
#define dequant VR_R(dequant)
#define ahead VR_R(ahead)
#define q4k_scales VR_R(q4k_scales)
#define axpy_q4k VR_R(axpy_q4k)
#define axpy_q4k_table VR_R(axpy_q4k_table)
#define axpy_q6k VR_R(axpy_q6k)
#define q6k_bytes VR_R(q6k_bytes)
#define axpy_q8_0 VR_R(axpy_q8_0)
#define axpy_plain VR_R(axpy_plain)
#define group VR_R(group)
#define dot_q4k VR_R(dot_q4k)
#define dot_q6k VR_R(dot_q6k)
#define dot_q8_0 VR_R(dot_q8_0)
#define dot_plain VR_R(dot_plain)

/* W lanes of float, of int32, of bytes (plain scalars for the 1-lane kernels). */
#if defined(VR_ROWS_VECTOR) && VR_ROWS_W > 1
typedef float rvf __attribute__((vector_size(4 * W)));
typedef uint8_t rvu8 __attribute__((vector_size(W)));
typedef int8_t rvi8 __attribute__((vector_size(W)));
typedef int32_t rvi32 __attribute__((vector_size(4 * W)));
#else
typedef float rvf;
typedef uint8_t rvu8;
typedef int8_t rvi8;
typedef int32_t rvi32;
#endif

/* W bytes at p, zero-extended to int32 lanes (u8i) or sign-extended to floats (i8f): x86 spelled out (GCC
 * 12 goes through 16-bit lanes or one lane at a time otherwise), the rest through generic vectors. The
 * nibbles and bits of Q4_K and Q6_K are taken apart on the int32 lanes, which every target shifts and masks
 * natively: on bytes, vectors narrower than 16 (AVX2's 8, the base's 4) were shifted a byte at a time, at
 * 1-4 GB/s. */
#if defined(VR_ROWS_ISA)
VR_RFN rvi32 u8i(const uint8_t *p) {
#if VR_ROWS_ISA == 512
    __m128i x;
    memcpy(&x, p, 16);
    const __m512i v = _mm512_cvtepu8_epi32(x);
#else
    int64_t b;
    memcpy(&b, p, 8);
    const __m256i v = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(b));
#endif
    rvi32 r;
    memcpy(&r, &v, sizeof r);
    return r;
}
VR_RFN rvf i8f(const uint8_t *p) {
#if VR_ROWS_ISA == 512
    __m128i x;
    memcpy(&x, p, 16);
    const __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(x));
#else
    int64_t b;
    memcpy(&b, p, 8);
    const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(b)));
#endif
    rvf r;
    memcpy(&r, &f, sizeof r);
    return r;
}
VR_RFN float h2f(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}
#elif defined(VR_ROWS_VECTOR) && VR_ROWS_W == 4 && defined(__SSE2__) /* x86-64's baseline: GCC widens 4 bytes
 * a lane at a time through the stack otherwise (measured 1.4 GB/s for the K-quants) */
#include <emmintrin.h>
VR_RFN rvi32 u8i(const uint8_t *p) {
    int32_t w;
    memcpy(&w, p, 4);
    const __m128i z = _mm_setzero_si128(), v = _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(w), z), z);
    rvi32 r;
    memcpy(&r, &v, sizeof r);
    return r;
}
VR_RFN rvf i8f(const uint8_t *p) { /* each byte to the top of its lane, then shifted down with its sign */
    int32_t w;
    memcpy(&w, p, 4);
    const __m128i b = _mm_cvtsi32_si128(w), x = _mm_unpacklo_epi8(b, b);
    const __m128 f = _mm_cvtepi32_ps(_mm_srai_epi32(_mm_unpacklo_epi16(x, x), 24));
    rvf r;
    memcpy(&r, &f, sizeof r);
    return r;
}
VR_RFN float h2f(const uint8_t *p) { return half_float(p); }
#elif defined(VR_ROWS_VECTOR) && VR_ROWS_W > 1
VR_RFN rvi32 u8i(const uint8_t *p) {
    rvu8 v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, rvi32);
}
VR_RFN rvf i8f(const uint8_t *p) {
    rvi8 v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(__builtin_convertvector(v, rvi32), rvf);
}
VR_RFN float h2f(const uint8_t *p) { return half_float(p); }
#else
VR_RFN rvi32 u8i(const uint8_t *p) { return *p; }
VR_RFN rvf i8f(const uint8_t *p) { return (float)(int8_t)*p; }
VR_RFN float h2f(const uint8_t *p) { return half_float(p); }
#endif
#if defined(VR_ROWS_VECTOR) && VR_ROWS_W > 1
VR_RFN rvf i2f(rvi32 v) { return __builtin_convertvector(v, rvf); }
#else
VR_RFN rvf i2f(rvi32 v) { return (float)v; }
#endif

VR_RFN rvf ld(const float *p) { rvf v; memcpy(&v, p, sizeof v); return v; }
VR_RFN void st(float *p, rvf v) { memcpy(p, &v, sizeof v); }
#if defined(VR_ROWS_ISA) /* a broadcast: (rvf){0} + x costs an addition too (x + 0 is not x for x = -0) */
VR_RFN rvf splat(float x) {
#if VR_ROWS_ISA == 512
    const __m512 v = _mm512_set1_ps(x);
#else
    const __m256 v = _mm256_set1_ps(x);
#endif
    rvf r;
    memcpy(&r, &v, sizeof r);
    return r;
}
#else
VR_RFN rvf splat(float x) { return (rvf){0} + x; }
#endif
VR_RFN float hsum(rvf v) {
    float a[W], s = 0.0f;
    memcpy(a, &v, sizeof a);
    for (int j = 0; j < W; j++) s += a[j];
    return s;
}

/* Part `blk` of `nb` of each of the rows `next`, the rows used after the current ones, asked for ahead
 * of time and spread over the current rows' blocks: the file's 4 KB pages end the hardware's own
 * prefetching at every page, which left these kernels waiting on memory (measured 3x slower than
 * the same reads from cache, against 1.3x with this). */
VR_RFN void ahead(const uint8_t *const *next, int nn, int64_t span, int64_t blk, int64_t nb) {
    const int64_t lo = span * blk / nb & ~(int64_t)63, hi = span * (blk + 1) / nb;
    for (int r = 0; r < nn; r++)
        for (int64_t o = lo; o < hi; o += 64) VR_PREFETCH(next[r] + o);
}

/* Rows of F32 or F16 (and any chunk length): dequantised 256 values at a time, then used. */
VR_RFN void dequant(int32_t type, const uint8_t *b, int n, float *VR_RESTRICT y) {
    if (type == VR_F16)
        for (int l = 0; l < n; l++) y[l] = half_float(b + 2 * l);
    else
        memcpy(y, b, sizeof(float) * (size_t)n);
}

/* A Q4_K block's 8 sub-block scales d·sc and offsets dmin·m (q4k_unpack), converted 8 at a time on x86. */
VR_RFN void q4k_scales(const uint8_t *b, float *sc, float *off) {
    const float d = h2f(b), dmin = h2f(b + 2);
    uint8_t q[16];
    q4k_unpack(b + 4, q);
#if defined(VR_ROWS_ISA)
    __m128i x;
    memcpy(&x, q, 16);
    _mm256_storeu_ps(sc, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(x)), _mm256_set1_ps(d)));
    _mm256_storeu_ps(off, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(x, 8))),
                                        _mm256_set1_ps(dmin)));
#else
    for (int j = 0; j < 8; j++) sc[j] = d * (float)q[j], off[j] = dmin * (float)q[8 + j];
#endif
}

/* out += Σ_r c_r · row_r for nr <= 4 rows at once (out is read and written once per 4 rows). Q4_K: a
 * block's byte l holds value l of sub-block 2j (low nibble) and of sub-block 2j+1 (high nibble). */
/* the rows after these (their part of `span` bytes from each pointer: a column range's, or the whole row) */
#define VR_AHEAD_ARGS const uint8_t *const *next, int nn

VR_RFN void axpy_q4k(const uint8_t *const *rows, const float *c, int nr, int64_t n_cols, float *out, VR_AHEAD_ARGS) {
    for (int64_t blk = 0; blk < n_cols / VR_QK_K; blk++) {
        ahead(next, nn, n_cols / VR_QK_K * VR_Q4_K_BYTES, blk, n_cols / VR_QK_K);
        float a[4][8], base[8] = {0};
        for (int r = 0; r < nr; r++) {
            float off[8];
            q4k_scales(rows[r] + blk * VR_Q4_K_BYTES, a[r], off);
            for (int j = 0; j < 8; j++) base[j] -= c[r] * off[j], a[r][j] *= c[r];
        }
        float *o = out + blk * VR_QK_K;
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l += W) {
                rvf lo = ld(o + 64 * j + l) + splat(base[2 * j]), hi = ld(o + 64 * j + 32 + l) + splat(base[2 * j + 1]);
                for (int r = 0; r < nr; r++) {
                    const rvi32 q = u8i(rows[r] + blk * VR_Q4_K_BYTES + 16 + 32 * j + l);
                    lo += splat(a[r][2 * j]) * i2f(q & 0xF);
                    hi += splat(a[r][2 * j + 1]) * i2f(q >> 4);
                }
                st(o + 64 * j + l, lo), st(o + 64 * j + 32 + l, hi);
            }
    }
}

#if defined(VR_ROWS_ISA) && VR_ROWS_ISA == 512
/* Q4_K on AVX-512, dequantised by table: vpermps gives lane i the entry of a 16-float table that the low 4
 * bits of lane i name, so with the table a·(0, 1, ..., 15) of a sub-block (a = c·d·sc) one permute turns 16
 * nibbles into their products, where axpy_q4k widens, converts and multiplies them (about 4 operations per
 * 16 values against 7). The nibbles are used where they lie: a chunk's 32 bytes, broadcast to both halves
 * of a vector and shifted by a lane's own count, give 16 values of one sub-block (the permute ignores the
 * bits above), in an order of their own; the sums `po` are kept in that order (q4k_table_column). */
VR_RFN void axpy_q4k_table(const uint8_t *const *rows, const float *c, int nr, int64_t n_cols, float *po,
                           VR_AHEAD_ARGS) {
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i shift[4] = {
        _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8),
        _mm512_setr_epi32(16, 16, 16, 16, 16, 16, 16, 16, 24, 24, 24, 24, 24, 24, 24, 24),
        _mm512_setr_epi32(4, 4, 4, 4, 4, 4, 4, 4, 12, 12, 12, 12, 12, 12, 12, 12),
        _mm512_setr_epi32(20, 20, 20, 20, 20, 20, 20, 20, 28, 28, 28, 28, 28, 28, 28, 28),
    };
    for (int64_t blk = 0; blk < n_cols / VR_QK_K; blk++) {
        ahead(next, nn, n_cols / VR_QK_K * VR_Q4_K_BYTES, blk, n_cols / VR_QK_K);
        float a[4][16], base[16]; /* per row: c·d·sc of the 8 sub-blocks, then -c·dmin·m (summed into base) */
        __m512 base_v = _mm512_setzero_ps();
        for (int r = 0; r < nr; r++) {
            const uint8_t *b = rows[r] + blk * VR_Q4_K_BYTES;
            uint8_t q[16];
            q4k_unpack(b + 4, q);
            __m128i bytes;
            memcpy(&bytes, q, 16);
            const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)),
                                           _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(c[r] * h2f(b)),
                                                                _mm512_set1_ps(-c[r] * h2f(b + 2))));
            _mm512_storeu_ps(a[r], f);
            base_v = _mm512_add_ps(base_v, f);
        }
        _mm512_storeu_ps(base, base_v);
        float *o = po + blk * VR_QK_K;
        for (int j = 0; j < 4; j++) {
            __m512 acc[4];
            for (int t = 0; t < 4; t++)
                acc[t] = _mm512_add_ps(_mm512_loadu_ps(o + 64 * j + 16 * t), _mm512_set1_ps(base[8 + 2 * j + t / 2]));
            for (int r = 0; r < nr; r++) {
                const __m512i q = _mm512_broadcast_i64x4(
                    _mm256_loadu_si256((const __m256i *)(rows[r] + blk * VR_Q4_K_BYTES + 16 + 32 * j)));
                const __m512 lo = _mm512_mul_ps(iota, _mm512_set1_ps(a[r][2 * j]));
                const __m512 hi = _mm512_mul_ps(iota, _mm512_set1_ps(a[r][2 * j + 1]));
                for (int t = 0; t < 4; t++)
                    acc[t] = _mm512_add_ps(acc[t], _mm512_permutexvar_ps(_mm512_srlv_epi32(q, shift[t]), t < 2 ? lo : hi));
            }
            for (int t = 0; t < 4; t++) _mm512_storeu_ps(o + 64 * j + 16 * t, acc[t]);
        }
    }
}
#endif

/* Q6_K: 2 halves of 128 values; value l of quarter k (k = 0..3) of a half is 4 bits of ql (byte l or
 * l + 32, low or high nibble) and 2 bits of qh[l] (bits 2k, 2k+1), minus 32, scaled by sc[l/16 + 2k]. */
#define VR_Q6U(ql, qh, k) i2f(((k) < 2 ? (ql) & 0xF : (ql) >> 4) | ((((qh) >> (2 * (k))) & 3) << 4))
#define VR_Q6(ql, qh, k) (VR_Q6U(ql, qh, k) - splat(32.0f))

#if defined(VR_ROWS_ISA) && VR_ROWS_ISA == 256
/* AVX2: the 4 quarters of half h of a Q6_K block assembled as 32 bytes each (the 6-bit values, before the
 * -32), 32 values per operation: x86 has no byte shifts, but 16-bit ones with the bits that cross into the
 * other byte masked off do. Taken apart on int32 lanes instead, a Q6_K value had cost about 1 operation. */
VR_RFN void q6k_bytes(const uint8_t *b, int h, uint8_t (*q)[32]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m6 = _mm256_set1_epi8(0x30);
    const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(b + 64 * h));
    const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32));
    const __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
    _mm256_store_si256((__m256i *)q[0], _mm256_or_si256(_mm256_and_si256(ql0, m4),
                                                         _mm256_and_si256(_mm256_slli_epi16(qh, 4), m6)));
    _mm256_store_si256((__m256i *)q[1], _mm256_or_si256(_mm256_and_si256(ql1, m4),
                                                         _mm256_and_si256(_mm256_slli_epi16(qh, 2), m6)));
    _mm256_store_si256((__m256i *)q[2], _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                                         _mm256_and_si256(qh, m6)));
    _mm256_store_si256((__m256i *)q[3], _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                                         _mm256_and_si256(_mm256_srli_epi16(qh, 2), m6)));
}
#endif

VR_RFN void axpy_q6k(const uint8_t *const *rows, const float *c, int nr, int64_t n_cols, float *out, VR_AHEAD_ARGS) {
    for (int64_t blk = 0; blk < n_cols / VR_QK_K; blk++) {
        ahead(next, nn, n_cols / VR_QK_K * VR_Q6_K_BYTES, blk, n_cols / VR_QK_K);
        float a[4][16], base[16] = {0}; /* the -32 of every value, summed over the rows per scale */
#if defined(VR_ROWS_ISA) /* the 16 scales 8 or 16 at a time: one by one they took a quarter of the time */
        for (int r = 0; r < nr; r++) {
            const uint8_t *b = rows[r] + blk * VR_Q6_K_BYTES;
            __m128i sc;
            memcpy(&sc, b + 192, 16);
            const float d = c[r] * h2f(b + 208);
            for (int h = 0; h < 16; h += 8) {
                const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(h ? _mm_srli_si128(sc, 8) : sc)),
                                               _mm256_set1_ps(d));
                _mm256_storeu_ps(a[r] + h, f);
                _mm256_storeu_ps(base + h, _mm256_fnmadd_ps(_mm256_set1_ps(32.0f), f, _mm256_loadu_ps(base + h)));
            }
        }
#else
        for (int r = 0; r < nr; r++) {
            const uint8_t *b = rows[r] + blk * VR_Q6_K_BYTES;
            const float d = c[r] * h2f(b + 208);
            for (int j = 0; j < 16; j++) a[r][j] = d * (float)(int8_t)b[192 + j], base[j] -= 32.0f * a[r][j];
        }
#endif
        float *o = out + blk * VR_QK_K;
#if defined(VR_ROWS_ISA) && VR_ROWS_ISA == 256 /* each half's bytes for all rows, then widened 8 at a time from
 * there (a load that widens); this took 0.70x the time of the code below (one thread, 3B's ffn_down) */
        for (int h = 0; h < 2; h++) {
            uint8_t q[4][4][32] __attribute__((aligned(32))); /* [row][quarter][value] */
            for (int r = 0; r < nr; r++) q6k_bytes(rows[r] + blk * VR_Q6_K_BYTES, h, q[r]);
            for (int l = 0; l < 32; l += 8) {
                __m256 v[4];
                for (int k = 0; k < 4; k++)
                    v[k] = _mm256_add_ps(_mm256_loadu_ps(o + 128 * h + 32 * k + l),
                                         _mm256_set1_ps(base[8 * h + l / 16 + 2 * k]));
                for (int r = 0; r < nr; r++)
                    for (int k = 0; k < 4; k++) {
                        int64_t w;
                        memcpy(&w, q[r][k] + l, 8);
                        const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(w)));
                        v[k] = _mm256_fmadd_ps(_mm256_set1_ps(a[r][8 * h + l / 16 + 2 * k]), f, v[k]);
                    }
                for (int k = 0; k < 4; k++) _mm256_storeu_ps(o + 128 * h + 32 * k + l, v[k]);
            }
        }
#else
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l += W) {
                rvf v[4];
                for (int k = 0; k < 4; k++) v[k] = ld(o + 128 * h + 32 * k + l) + splat(base[8 * h + l / 16 + 2 * k]);
                for (int r = 0; r < nr; r++) {
                    const uint8_t *b = rows[r] + blk * VR_Q6_K_BYTES;
                    const rvi32 ql0 = u8i(b + 64 * h + l), ql1 = u8i(b + 64 * h + 32 + l), qh = u8i(b + 128 + 32 * h + l);
                    const float *s = a[r] + 8 * h + l / 16;
                    v[0] += splat(s[0]) * VR_Q6U(ql0, qh, 0);
                    v[1] += splat(s[2]) * VR_Q6U(ql1, qh, 1);
                    v[2] += splat(s[4]) * VR_Q6U(ql0, qh, 2);
                    v[3] += splat(s[6]) * VR_Q6U(ql1, qh, 3);
                }
                for (int k = 0; k < 4; k++) st(o + 128 * h + 32 * k + l, v[k]);
            }
#endif
    }
}

VR_RFN void axpy_q8_0(const uint8_t *const *rows, const float *c, int nr, int64_t n_cols, float *out, VR_AHEAD_ARGS) {
    for (int64_t blk = 0; blk < n_cols / 32; blk++) {
        if (blk % 8 == 0) ahead(next, nn, n_cols / 32 * VR_Q8_0_BYTES, blk / 8, (n_cols / 32 + 7) / 8);
        float a[4];
        for (int r = 0; r < nr; r++) a[r] = c[r] * h2f(rows[r] + blk * VR_Q8_0_BYTES);
        float *o = out + blk * 32;
        for (int l = 0; l < 32; l += W) {
            rvf v = ld(o + l);
            for (int r = 0; r < nr; r++) {
                v += splat(a[r]) * i8f(rows[r] + blk * VR_Q8_0_BYTES + 2 + l);
            }
            st(o + l, v);
        }
    }
}

VR_RFN void axpy_plain(int32_t type, const uint8_t *const *rows, const float *c, int nr, int64_t n_cols, float *out) {
    float y[VR_QK_K];
    const int64_t size = type == VR_F16 ? 2 : 4;
    for (int r = 0; r < nr; r++)
        for (int64_t col = 0; col < n_cols; col += VR_QK_K) {
            const int n = n_cols - col < VR_QK_K ? (int)(n_cols - col) : VR_QK_K;
            dequant(type, rows[r] + col * size, n, y);
            for (int l = 0; l < n; l++) out[col + l] += c[r] * y[l];
        }
}

/* row · x; the quantised types sum q·x per sub-block in W lanes, then scale it: for Q4_K,
 * Σ (d·q - m)·x = d·Σ q·x - m·Σ x. */
VR_RFN float dot_q4k(const uint8_t *row, int64_t n_cols, const float *x, VR_AHEAD_ARGS) {
    rvf acc = splat(0.0f);
    for (int64_t blk = 0; blk < n_cols / VR_QK_K; blk++) {
        ahead(next, nn, n_cols / VR_QK_K * VR_Q4_K_BYTES, blk, n_cols / VR_QK_K);
        float sc[8], off[8];
        const uint8_t *b = row + blk * VR_Q4_K_BYTES;
        q4k_scales(b, sc, off);
        const float *xb = x + blk * VR_QK_K;
        for (int j = 0; j < 4; j++) {
            rvf lo = splat(0.0f), hi = splat(0.0f), x_lo = splat(0.0f), x_hi = splat(0.0f);
            for (int l = 0; l < 32; l += W) {
                const rvi32 q = u8i(b + 16 + 32 * j + l);
                const rvf a = ld(xb + 64 * j + l), c = ld(xb + 64 * j + 32 + l);
                lo += i2f(q & 0xF) * a, x_lo += a;
                hi += i2f(q >> 4) * c, x_hi += c;
            }
            acc += splat(sc[2 * j]) * lo + splat(sc[2 * j + 1]) * hi - splat(off[2 * j]) * x_lo -
                   splat(off[2 * j + 1]) * x_hi;
        }
    }
    return hsum(acc);
}

VR_RFN float dot_q6k(const uint8_t *row, int64_t n_cols, const float *x, VR_AHEAD_ARGS) {
    rvf acc = splat(0.0f);
    for (int64_t blk = 0; blk < n_cols / VR_QK_K; blk++) {
        ahead(next, nn, n_cols / VR_QK_K * VR_Q6_K_BYTES, blk, n_cols / VR_QK_K);
        const uint8_t *b = row + blk * VR_Q6_K_BYTES;
        const float d = h2f(b + 208);
        const float *xb = x + blk * VR_QK_K;
        for (int h = 0; h < 2; h++)
            for (int g = 0; g < 2; g++) { /* values l in [16g, 16g + 16) of each quarter share a scale */
                rvf v[4] = {splat(0.0f), splat(0.0f), splat(0.0f), splat(0.0f)};
                for (int l = 16 * g; l < 16 * g + 16; l += W) {
                    const rvi32 ql0 = u8i(b + 64 * h + l), ql1 = u8i(b + 64 * h + 32 + l), qh = u8i(b + 128 + 32 * h + l);
                    const float *xh = xb + 128 * h + l;
                    v[0] += VR_Q6(ql0, qh, 0) * ld(xh);
                    v[1] += VR_Q6(ql1, qh, 1) * ld(xh + 32);
                    v[2] += VR_Q6(ql0, qh, 2) * ld(xh + 64);
                    v[3] += VR_Q6(ql1, qh, 3) * ld(xh + 96);
                }
                const int8_t *sc = (const int8_t *)(b + 192 + 8 * h + g);
                for (int k = 0; k < 4; k++) acc += splat(d * (float)sc[2 * k]) * v[k];
            }
    }
    return hsum(acc);
}

VR_RFN float dot_q8_0(const uint8_t *row, int64_t n_cols, const float *x, VR_AHEAD_ARGS) {
    rvf acc = splat(0.0f);
    for (int64_t blk = 0; blk < n_cols / 32; blk++) {
        if (blk % 8 == 0) ahead(next, nn, n_cols / 32 * VR_Q8_0_BYTES, blk / 8, (n_cols / 32 + 7) / 8);
        const uint8_t *b = row + blk * VR_Q8_0_BYTES;
        rvf v = splat(0.0f);
        for (int l = 0; l < 32; l += W) {
            v += i8f(b + 2 + l) * ld(x + blk * 32 + l);
        }
        acc += splat(h2f(b)) * v;
    }
    return hsum(acc);
}

VR_RFN float dot_plain(int32_t type, const uint8_t *row, int64_t n_cols, const float *x) {
    float y[VR_QK_K], s = 0.0f;
    const int64_t size = type == VR_F16 ? 2 : 4;
    for (int64_t col = 0; col < n_cols; col += VR_QK_K) {
        const int n = n_cols - col < VR_QK_K ? (int)(n_cols - col) : VR_QK_K;
        dequant(type, row + col * size, n, y);
        for (int l = 0; l < n; l++) s += y[l] * x[col + l];
    }
    return s;
}

/* The next group of up to 4 rows with a weight (rows that add nothing are not read), from *i on. */
VR_RFN int group(const uint8_t *data, int64_t row_bytes, const int64_t *ids, int64_t *i, int64_t i1, const float *coef,
                 const uint8_t **rows, float *c) {
    int n = 0;
    for (; *i < i1 && n < 4; ++*i)
        if (coef[*i] != 0.0f) rows[n] = data + (ids ? ids[*i] : *i) * row_bytes, c[n++] = coef[*i];
    return n;
}

static VR_ROWS_TARGET void VR_R(axpy)(int32_t type, const uint8_t *data, int64_t row_bytes, int64_t n_cols,
                                      const int64_t *ids, int64_t i0, int64_t i1, const float *coef, float *out) {
    const uint8_t *rows[2][4];
    float c[2][4];
    int64_t i = i0;
#if defined(VR_ROWS_ISA) && VR_ROWS_ISA == 512
    float *po = type == VR_Q4_K ? calloc((size_t)n_cols, sizeof(float)) : NULL; /* axpy_q4k_table's sums */
#endif
    int nr = group(data, row_bytes, ids, &i, i1, coef, rows[0], c[0]);
    for (int k = 0; nr; k ^= 1) { /* while group k is summed, group k ^ 1 is prefetched */
        const int nn = group(data, row_bytes, ids, &i, i1, coef, rows[k ^ 1], c[k ^ 1]);
#if defined(VR_ROWS_ISA) && VR_ROWS_ISA == 512
        if (po) axpy_q4k_table(rows[k], c[k], nr, n_cols, po, rows[k ^ 1], nn);
        else
#endif
        if (type == VR_Q4_K) axpy_q4k(rows[k], c[k], nr, n_cols, out, rows[k ^ 1], nn);
        else if (type == VR_Q6_K) axpy_q6k(rows[k], c[k], nr, n_cols, out, rows[k ^ 1], nn);
        else if (type == VR_Q8_0) axpy_q8_0(rows[k], c[k], nr, n_cols, out, rows[k ^ 1], nn);
        else axpy_plain(type, rows[k], c[k], nr, n_cols, out);
        nr = nn;
    }
#if defined(VR_ROWS_ISA) && VR_ROWS_ISA == 512
    if (po) {
        for (int64_t p = 0; p < n_cols; p++) out[q4k_table_column(p)] += po[p];
        free(po);
    }
#endif
}

static VR_ROWS_TARGET void VR_R(dot)(int32_t type, const uint8_t *data, int64_t row_bytes, int64_t n_cols,
                                     const int64_t *ids, int64_t i0, int64_t i1, const float *x, float *out) {
    for (int64_t i = i0; i < i1; i++) {
        const uint8_t *row = data + (ids ? ids[i] : i) * row_bytes;
        const int64_t j = i + VR_DOT_AHEAD;
        const uint8_t *next = data + (j < i1 ? (ids ? ids[j] : j) : 0) * row_bytes;
        const int nn = j < i1;
        if (type == VR_Q4_K) out[i] = dot_q4k(row, n_cols, x, &next, nn);
        else if (type == VR_Q6_K) out[i] = dot_q6k(row, n_cols, x, &next, nn);
        else if (type == VR_Q8_0) out[i] = dot_q8_0(row, n_cols, x, &next, nn);
        else out[i] = dot_plain(type, row, n_cols, x);
    }
}

static const vr_rows_kernels VR_R(rows_kernels) = {VR_R(axpy), VR_R(dot)};

#undef W
#undef VR_Q6
#undef VR_Q6U
#undef rvf
#undef rvu8
#undef rvi8
#undef rvi32
#undef ld
#undef st
#undef splat
#undef hsum
#undef i8f
#undef u8i
#undef i2f
#undef h2f
#undef dequant
#undef ahead
#undef q4k_scales
#undef axpy_q4k
#undef axpy_q6k
#undef q6k_bytes
#undef axpy_q8_0
#undef axpy_plain
#undef group
#undef axpy_q4k_table
#undef dot_q4k
#undef dot_q6k
#undef dot_q8_0
#undef dot_plain
#endif
