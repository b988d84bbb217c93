/*
 * kernel_driver: the native kernels (vr_sampling.c, vr_rows.c, vr_tail.c) as a command-line program, so that
 * builds Python cannot load can be checked against the tests' float64 references: the library cross-compiled
 * for aarch64 (NEON, what Apple Silicon runs) and run under qemu-aarch64, the -DVR_SCALAR build, a build
 * without OpenMP (as on macOS). tests/test_native_builds.py compiles it with the library's sources, writes
 * each kernel's inputs as raw little-endian arrays, runs one command per kernel and compares what it writes
 * with numpy. Only libc: no Python on the target (vr_hook.c, which needs Python.h, is left out).
 *
 * Commands (N values per vector; a file holding several vectors of N is several cases, one after another):
 *   lanes                                         the kernels the build runs: "sampling 4\nrows 4\n..."
 *   argmax_entropy N LOGITS OUT                   per case: int64 argmax, double entropy
 *   softmax N INV_T LOGITS OUT                    per case: double Σe, N float e (max: the logits' largest)
 *   nucleus N TOTAL E OUT TARGET...               float cut per target (vr_nucleus_cut)
 *   draw N C E OUT U...                           int64 token per u (vr_draw)
 *   head_terms N K LOGITS NORMS OUT               int64 count, 3 double stats, N float terms, K int64 ids
 *   rows_dot TYPE ROW_BYTES N_COLS THREADS DATA IDS X OUT          float per row (IDS "-": every row)
 *   rows_axpy TYPE ROW_BYTES N_COLS THREADS DATA IDS COEF OUT0 OUT N_COLS float: OUT0 + Σ coef·row
 *   adam N STEPS LR B1 B2 EPS P G M V OUT         STEPS double Σg², then p, m, v (G: STEPS·N gradients)
 *   norm_preserving D V_BASE DV V_NORM OUT        double ||dV||, then the rows as F16 (uint16)
 *   halves X OUT                                  X's floats as F16 (uint16)
 * VR_DRIVER_LANES=L in the environment runs every kernel at L lanes first (vr_simd_use, as VREASON_SIMD does
 * in the package), so that each level a build has is checked, not only its best.
 * Bad arguments or files: one line on stderr, exit status 2; a kernel's error code: exit status 3.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../vr_native.h" /* every entry point of the library, with its prototype */

static void fail(const char *what, const char *arg) {
    fprintf(stderr, "kernel_driver: %s: %s\n", what, arg);
    exit(2);
}

static int64_t int_arg(const char *s) {
    char *end;
    errno = 0;
    const long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) fail("not an integer", s);
    return (int64_t)v;
}

static double real_arg(const char *s) {
    char *end;
    errno = 0;
    const double v = strtod(s, &end);
    if (errno || end == s || *end) fail("not a number", s);
    return v;
}

/* The whole file at `path`, its size in *size; its size must be a positive multiple of `unit` bytes. */
static void *load(const char *path, size_t unit, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) fail("cannot open", path);
    if (fseek(f, 0, SEEK_END)) fail("cannot seek", path);
    const long n = ftell(f);
    rewind(f);
    if (n <= 0 || (size_t)n % unit) fail("wrong size of input", path);
    void *data = malloc((size_t)n);
    if (!data || fread(data, 1, (size_t)n, f) != (size_t)n) fail("cannot read", path);
    fclose(f);
    *size = (size_t)n;
    return data;
}

/* A file of exactly `count` items of `unit` bytes. */
static void *load_exact(const char *path, size_t unit, size_t count) {
    size_t size;
    void *data = load(path, unit, &size);
    if (size != unit * count) fail("wrong size of input", path);
    return data;
}

static void *scratch(size_t bytes) {
    void *p = calloc(bytes ? bytes : 1, 1);
    if (!p) fail("out of memory", "scratch");
    return p;
}

static FILE *create(const char *path) {
    FILE *f = fopen(path, "wb");
    if (!f) fail("cannot create", path);
    return f;
}

static void put(FILE *f, const void *data, size_t bytes) {
    if (fwrite(data, 1, bytes, f) != bytes) fail("cannot write", "output");
}

static void done(FILE *f) {
    if (fclose(f)) fail("cannot write", "output");
}

static void need(int argc, int at_least, const char *usage) {
    if (argc < at_least) fail("usage", usage);
}

static int cmd_argmax_entropy(int argc, char **argv) {
    need(argc, 5, "argmax_entropy N LOGITS OUT");
    const int64_t n = int_arg(argv[2]);
    size_t size;
    const float *x = load(argv[3], sizeof(float) * (size_t)n, &size);
    FILE *out = create(argv[4]);
    for (size_t c = 0; c < size / (sizeof(float) * (size_t)n); c++) {
        double h;
        const int64_t top = vr_argmax_entropy(x + c * (size_t)n, n, &h);
        put(out, &top, sizeof top), put(out, &h, sizeof h);
    }
    done(out);
    return 0;
}

static int cmd_softmax(int argc, char **argv) {
    need(argc, 6, "softmax N INV_T LOGITS OUT");
    const int64_t n = int_arg(argv[2]);
    const float inv_t = (float)real_arg(argv[3]);
    size_t size;
    const float *x = load(argv[4], sizeof(float) * (size_t)n, &size);
    float *e = scratch(sizeof(float) * (size_t)n);
    FILE *out = create(argv[5]);
    for (size_t c = 0; c < size / (sizeof(float) * (size_t)n); c++) {
        const float *l = x + c * (size_t)n;
        double h;
        const double s = vr_softmax(l, n, l[vr_argmax_entropy(l, n, &h)], inv_t, e);
        put(out, &s, sizeof s), put(out, e, sizeof(float) * (size_t)n);
    }
    done(out);
    return 0;
}

static int cmd_nucleus(int argc, char **argv) {
    need(argc, 6, "nucleus N TOTAL E OUT TARGET...");
    const int64_t n = int_arg(argv[2]);
    const double total = real_arg(argv[3]);
    const float *e = load_exact(argv[4], sizeof(float), (size_t)n);
    int32_t *ids = scratch(sizeof(int32_t) * (size_t)n);
    double *hist = scratch(sizeof(double) * (size_t)vr_nucleus_hist_size());
    FILE *out = create(argv[5]);
    for (int a = 6; a < argc; a++) {
        const float cut = vr_nucleus_cut(e, n, total, real_arg(argv[a]), ids, hist);
        put(out, &cut, sizeof cut);
    }
    done(out);
    return 0;
}

static int cmd_draw(int argc, char **argv) {
    need(argc, 6, "draw N C E OUT U...");
    const int64_t n = int_arg(argv[2]);
    const float c = (float)real_arg(argv[3]);
    const float *e = load_exact(argv[4], sizeof(float), (size_t)n);
    FILE *out = create(argv[5]);
    for (int a = 6; a < argc; a++) {
        const int64_t pick = vr_draw(e, n, c, real_arg(argv[a]));
        put(out, &pick, sizeof pick);
    }
    done(out);
    return 0;
}

static int cmd_head_terms(int argc, char **argv) {
    need(argc, 7, "head_terms N K LOGITS NORMS OUT");
    const int64_t n = int_arg(argv[2]), k = int_arg(argv[3]);
    const float *x = load_exact(argv[4], sizeof(float), (size_t)n), *w = load_exact(argv[5], sizeof(float), (size_t)n);
    float *t = scratch(sizeof(float) * (size_t)n);
    int64_t *ids = scratch(sizeof(int64_t) * (size_t)(k > 0 ? k : 0));
    double stats[3];
    const int64_t got = vr_head_terms(x, w, n, k, t, ids, stats);
    if (got < 0) return 3;
    FILE *out = create(argv[6]);
    put(out, &got, sizeof got), put(out, stats, sizeof stats), put(out, t, sizeof(float) * (size_t)n);
    put(out, ids, sizeof(int64_t) * (size_t)got);
    done(out);
    return 0;
}

/* The rows' ids (IDS "-": none, every row of DATA in order) and their count. */
static const int64_t *row_ids(const char *path, int64_t all_rows, int64_t *n) {
    if (!strcmp(path, "-")) {
        *n = all_rows;
        return NULL;
    }
    size_t size;
    const int64_t *ids = load(path, sizeof(int64_t), &size);
    *n = (int64_t)(size / sizeof(int64_t));
    for (int64_t i = 0; i < *n; i++)
        if (ids[i] < 0 || ids[i] >= all_rows) fail("row id out of range", path);
    return ids;
}

static int cmd_rows(int argc, char **argv, int axpy) {
    need(argc, axpy ? 11 : 10, axpy ? "rows_axpy TYPE ROW_BYTES N_COLS THREADS DATA IDS COEF OUT0 OUT"
                                    : "rows_dot TYPE ROW_BYTES N_COLS THREADS DATA IDS X OUT");
    const int32_t type = (int32_t)int_arg(argv[2]), threads = (int32_t)int_arg(argv[5]);
    const int64_t row_bytes = int_arg(argv[3]), n_cols = int_arg(argv[4]);
    size_t size;
    const void *data = load(argv[6], (size_t)row_bytes, &size);
    int64_t n;
    const int64_t *ids = row_ids(argv[7], (int64_t)(size / (size_t)row_bytes), &n);
    int32_t rc;
    float *out;
    size_t out_len;
    if (axpy) {
        const float *coef = load_exact(argv[8], sizeof(float), (size_t)n);
        out = load_exact(argv[9], sizeof(float), (size_t)n_cols), out_len = (size_t)n_cols;
        rc = vr_rows_axpy(type, data, row_bytes, n_cols, ids, n, coef, out, threads);
    } else {
        const float *x = load_exact(argv[8], sizeof(float), (size_t)n_cols);
        out = scratch(sizeof(float) * (size_t)n), out_len = (size_t)n;
        rc = vr_rows_dot(type, data, row_bytes, n_cols, ids, n, x, out, threads);
    }
    if (rc) return 3;
    FILE *f = create(argv[axpy ? 10 : 9]);
    put(f, out, sizeof(float) * out_len);
    done(f);
    return 0;
}

static int cmd_adam(int argc, char **argv) {
    need(argc, 13, "adam N STEPS LR B1 B2 EPS P G M V OUT");
    const int64_t n = int_arg(argv[2]), steps = int_arg(argv[3]);
    const double lr = real_arg(argv[4]), b1 = real_arg(argv[5]), b2 = real_arg(argv[6]), eps = real_arg(argv[7]);
    float *p = load_exact(argv[8], sizeof(float), (size_t)n), *m = load_exact(argv[10], sizeof(float), (size_t)n);
    float *v = load_exact(argv[11], sizeof(float), (size_t)n);
    const float *g = load_exact(argv[9], sizeof(float) * (size_t)n, (size_t)steps);
    FILE *out = create(argv[12]);
    for (int64_t t = 1; t <= steps; t++) {
        const double gg = vr_tail_adam(p, g + (t - 1) * n, m, v, n, lr, b1, b2, eps, t);
        put(out, &gg, sizeof gg);
    }
    put(out, p, sizeof(float) * (size_t)n), put(out, m, sizeof(float) * (size_t)n);
    put(out, v, sizeof(float) * (size_t)n);
    done(out);
    return 0;
}

static int cmd_norm_preserving(int argc, char **argv) {
    need(argc, 7, "norm_preserving D V_BASE DV V_NORM OUT");
    const int32_t d = (int32_t)int_arg(argv[2]);
    size_t size;
    const float *norm = load(argv[5], sizeof(float), &size);
    const int64_t n = (int64_t)(size / sizeof(float));
    const float *base = load_exact(argv[3], sizeof(float), (size_t)(n * d));
    const float *dv = load_exact(argv[4], sizeof(float), (size_t)(n * d));
    uint16_t *v16 = scratch(sizeof(uint16_t) * (size_t)(n * d));
    const double dv_norm = vr_tail_norm_preserving_change(base, dv, norm, n, d, v16, NULL, NULL);
    if (dv_norm < 0) return 3;
    FILE *out = create(argv[6]);
    put(out, &dv_norm, sizeof dv_norm), put(out, v16, sizeof(uint16_t) * (size_t)(n * d));
    done(out);
    return 0;
}

static int cmd_halves(int argc, char **argv) {
    need(argc, 4, "halves X OUT");
    size_t size;
    const float *x = load(argv[2], sizeof(float), &size);
    const int32_t n = (int32_t)(size / sizeof(float));
    uint16_t *y = scratch(sizeof(uint16_t) * (size_t)n);
    vr_tail_halves(x, y, n);
    FILE *out = create(argv[3]);
    put(out, y, sizeof(uint16_t) * (size_t)n);
    done(out);
    return 0;
}

int main(int argc, char **argv) {
    need(argc, 2, "kernel_driver COMMAND ARGS... (commands: see kernel_driver.c)");
    const char *cmd = argv[1], *lanes = getenv("VR_DRIVER_LANES"); /* the level VREASON_SIMD would force */
    if (lanes && vr_simd_use((int32_t)int_arg(lanes)) < 0) fail("no kernels of these lanes", lanes);
    if (!strcmp(cmd, "lanes")) {
        printf("sampling %d\nrows %d\nadam %d\nopenmp %d\n", (int)vr_sampling_lanes(), (int)vr_rows_lanes(),
               (int)vr_tail_adam_lanes(), (int)vr_rows_openmp());
        return 0;
    }
    if (!strcmp(cmd, "argmax_entropy")) return cmd_argmax_entropy(argc, argv);
    if (!strcmp(cmd, "softmax")) return cmd_softmax(argc, argv);
    if (!strcmp(cmd, "nucleus")) return cmd_nucleus(argc, argv);
    if (!strcmp(cmd, "draw")) return cmd_draw(argc, argv);
    if (!strcmp(cmd, "head_terms")) return cmd_head_terms(argc, argv);
    if (!strcmp(cmd, "rows_dot")) return cmd_rows(argc, argv, 0);
    if (!strcmp(cmd, "rows_axpy")) return cmd_rows(argc, argv, 1);
    if (!strcmp(cmd, "adam")) return cmd_adam(argc, argv);
    if (!strcmp(cmd, "norm_preserving")) return cmd_norm_preserving(argc, argv);
    if (!strcmp(cmd, "halves")) return cmd_halves(argc, argv);
    fail("unknown command", cmd);
    return 2;
}
