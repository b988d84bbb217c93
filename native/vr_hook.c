/*
 * vr_hook: the value-cache hook of vreason-local.
 *
 * llama.cpp calls `vr_hook_callback` (a ggml_backend_sched_eval_callback) on its compute thread for
 * every graph node of every decode, ~1000 nodes per token for a 3B model. Written in C so that
 * answering "no" costs a flag test and a few string compares, without Python's GIL: a busy UI thread
 * cannot slow decoding. It does two things:
 *   - records the persistent last-layer K and V cache tensors when they show up as view sources
 *     (their addresses are stable for the context's life), so Python can write value rows later;
 *   - while capturing is enabled, asks for the nodes named in its capture list and copies their F32
 *     data out (ggml_backend_tensor_get, so it works for host and device buffers alike). Several nodes
 *     may share a name (Qcur-L: matmul, bias, reshape, RoPE); the last one computed wins;
 *   - records the weight tensors named in its list when a node first uses them, so that the controller
 *     can read the last layer's weights where llama.cpp holds them (tail_weights.GGUFMatrix).
 * Writing the value rows happens between decode steps from Python, with ggml_backend_tensor_set.
 *
 * No ggml header is needed at build time: `struct vr_tensor` mirrors `struct ggml_tensor` of the
 * pinned llama.cpp (ggml 0.25.3), and Python checks the mirror against the running ggml at start-up.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vr_native.h"

#define VR_MAX_DIMS 4
#define VR_MAX_SRC 10
#define VR_MAX_OP_PARAMS 64
#define VR_MAX_NAME 64
#define VR_MAX_CAPTURES 8
#define VR_MAX_WEIGHTS 8
#define VR_TYPE_F32 0

/* Mirror of struct ggml_tensor (ggml/include/ggml.h). */
struct vr_tensor {
    int32_t type;
    void *buffer;
    int64_t ne[VR_MAX_DIMS];
    size_t nb[VR_MAX_DIMS];
    int32_t op;
    int32_t op_params[VR_MAX_OP_PARAMS / sizeof(int32_t)];
    int32_t flags;
    struct vr_tensor *src[VR_MAX_SRC];
    struct vr_tensor *view_src;
    size_t view_offs;
    void *data;
    char name[VR_MAX_NAME];
    void *extra;
    char padding[8];
};

typedef void (*vr_tensor_get_fn)(const struct vr_tensor *t, void *data, size_t offset, size_t size);

typedef struct {
    char name[VR_MAX_NAME];
    void *buf;
    size_t cap_bytes;
    size_t n_bytes;   /* bytes of the last copy, 0 if none */
    int64_t ne[VR_MAX_DIMS];
    int64_t n_seen;   /* copies since the last reset; nodes may share a name, the last one wins */
    int32_t error;    /* 1: not F32, 2: not contiguous, 3: larger than the buffer */
} vr_capture;

typedef struct {
    char name[VR_MAX_NAME];
    const struct vr_tensor *t; /* NULL until seen */
} vr_weight;

struct vr_hook { /* vr_native.h's vr_hook */
    int32_t capture_enabled;
    int32_t n_captures;
    vr_capture caps[VR_MAX_CAPTURES];
    int32_t n_weights, n_weights_found;
    vr_weight weights[VR_MAX_WEIGHTS];
    char cache_names[2][VR_MAX_NAME]; /* [0] = K, [1] = V of the last layer */
    struct vr_tensor *cache[2];
    vr_tensor_get_fn tensor_get;
    int64_t n_asked;
    int64_t n_observed;
};

VR_API size_t vr_tensor_size(void) { return sizeof(struct vr_tensor); }
VR_API size_t vr_name_offset(void) { return offsetof(struct vr_tensor, name); }
VR_API size_t vr_view_src_offset(void) { return offsetof(struct vr_tensor, view_src); }
VR_API int32_t vr_tensor_type(const struct vr_tensor *t) { return t->type; }
VR_API int64_t vr_tensor_ne(const struct vr_tensor *t, int i) { return t->ne[i]; }
VR_API size_t vr_tensor_nb(const struct vr_tensor *t, int i) { return t->nb[i]; }
VR_API const struct vr_tensor *vr_tensor_view_src(const struct vr_tensor *t) { return t->view_src; }
VR_API const char *vr_tensor_name(const struct vr_tensor *t) { return t->name; }
VR_API void *vr_tensor_data(const struct vr_tensor *t) { return t->data; }
VR_API void *vr_tensor_buffer(const struct vr_tensor *t) { return t->buffer; }

VR_API vr_hook *vr_hook_new(void *tensor_get) {
    vr_hook *h = (vr_hook *)calloc(1, sizeof(vr_hook));
    if (h) h->tensor_get = (vr_tensor_get_fn)tensor_get;
    return h;
}

VR_API void vr_hook_free(vr_hook *h) {
    if (!h) return;
    for (int i = 0; i < h->n_captures; i++) free(h->caps[i].buf);
    free(h);
}

VR_API int vr_hook_add_capture(vr_hook *h, const char *name, size_t cap_bytes) {
    if (h->n_captures >= VR_MAX_CAPTURES || strlen(name) >= VR_MAX_NAME) return -1;
    vr_capture *c = &h->caps[h->n_captures];
    memset(c, 0, sizeof(*c));
    strcpy(c->name, name);
    c->buf = malloc(cap_bytes);
    if (!c->buf) return -1;
    c->cap_bytes = cap_bytes;
    return h->n_captures++;
}

/* Record the model tensor `name` (a weight) when a graph node first uses it: where llama.cpp keeps its data
 * (for weights memory-mapped from the file, a pointer into llama.cpp's own mapping). Returns its index. */
VR_API int vr_hook_add_weight(vr_hook *h, const char *name) {
    if (h->n_weights >= VR_MAX_WEIGHTS || strlen(name) >= VR_MAX_NAME) return -1;
    strcpy(h->weights[h->n_weights].name, name);
    h->weights[h->n_weights].t = NULL;
    return h->n_weights++;
}

VR_API const struct vr_tensor *vr_hook_weight(const vr_hook *h, int i) { return h->weights[i].t; }

VR_API void vr_hook_set_cache_names(vr_hook *h, const char *k_name, const char *v_name) {
    strncpy(h->cache_names[0], k_name, VR_MAX_NAME - 1);
    strncpy(h->cache_names[1], v_name, VR_MAX_NAME - 1);
    h->cache[0] = h->cache[1] = NULL;
}

VR_API void vr_hook_enable(vr_hook *h, int on) { h->capture_enabled = on; }

VR_API void vr_hook_reset(vr_hook *h) {
    for (int i = 0; i < h->n_captures; i++) {
        h->caps[i].n_seen = 0;
        h->caps[i].n_bytes = 0;
        h->caps[i].error = 0;
    }
    h->n_asked = h->n_observed = 0;
}

VR_API const void *vr_hook_capture(const vr_hook *h, int i, int64_t *ne, size_t *n_bytes, int64_t *n_seen,
                                   int32_t *error) {
    const vr_capture *c = &h->caps[i];
    memcpy(ne, c->ne, sizeof(c->ne));
    *n_bytes = c->n_bytes;
    *n_seen = c->n_seen;
    *error = c->error;
    return c->buf;
}

VR_API struct vr_tensor *vr_hook_cache(const vr_hook *h, int which) { return h->cache[which]; }
VR_API int64_t vr_hook_n_asked(const vr_hook *h) { return h->n_asked; }
VR_API int64_t vr_hook_n_observed(const vr_hook *h) { return h->n_observed; }

static void record_cache(vr_hook *h, struct vr_tensor *t) {
    if (!t) return;
    for (int w = 0; w < 2; w++) {
        if (!h->cache[w] && h->cache_names[w][0] && strcmp(t->name, h->cache_names[w]) == 0) h->cache[w] = t;
    }
}

static void record_weight(vr_hook *h, const struct vr_tensor *t) {
    if (!t) return;
    for (int i = 0; i < h->n_weights; i++) {
        if (!h->weights[i].t && strcmp(t->name, h->weights[i].name) == 0) {
            h->weights[i].t = t;
            h->n_weights_found++;
        }
    }
}

static void copy_node(vr_hook *h, vr_capture *c, const struct vr_tensor *t) {
    if (t->type != VR_TYPE_F32) { c->error = 1; return; }
    size_t expect = sizeof(float);
    for (int d = 0; d < VR_MAX_DIMS; d++) {
        if (t->nb[d] != expect && t->ne[d] > 1) { c->error = 2; return; }
        expect *= (size_t)t->ne[d];
    }
    if (expect > c->cap_bytes) { c->error = 3; return; }
    h->tensor_get(t, c->buf, 0, expect);
    memcpy(c->ne, t->ne, sizeof(c->ne));
    c->n_bytes = expect;
    c->n_seen++;
    c->error = 0; /* the last node of the name wins, including over an earlier view that could not be copied */
}

VR_API bool vr_hook_callback(struct vr_tensor *t, bool ask, void *user_data) {
    vr_hook *h = (vr_hook *)user_data;
    if (ask) {
        h->n_asked++;
        if (!h->cache[0] || !h->cache[1]) {
            record_cache(h, t->view_src);
            for (int s = 0; s < VR_MAX_SRC; s++) record_cache(h, t->src[s]);
        }
        if (h->n_weights_found < h->n_weights) { /* the first decode: weights are its nodes' sources */
            for (int s = 0; s < VR_MAX_SRC; s++) record_weight(h, t->src[s]);
        }
        if (!h->capture_enabled) return false;
        for (int i = 0; i < h->n_captures; i++) {
            if (strcmp(t->name, h->caps[i].name) == 0) return true;
        }
        return false;
    }
    h->n_observed++;
    for (int i = 0; i < h->n_captures; i++) {
        if (strcmp(t->name, h->caps[i].name) == 0) copy_node(h, &h->caps[i], t);
    }
    return true; /* false would abort the graph */
}

/* Cancellation inside a long graph compute (a prefill batch, a frame pair in the vision encoder). Python
 * sets `flag` from any thread. llama.cpp's CPU backend polls `vr_abort_requested` between graph nodes (its
 * abort_callback). The vision encoder offers only an eval callback, which its scheduler consults before it
 * computes: `vr_cancel_eval` asks for every `every`-th node, so the graph runs in pieces, and aborts after
 * the piece that is running when the flag is set. Both are a memory read when nothing is cancelled. */
typedef struct {
    volatile int32_t flag;
    int32_t every;
    int64_t n;
} vr_cancel;

VR_API bool vr_abort_requested(void *data) { return ((vr_cancel *)data)->flag != 0; }

VR_API bool vr_cancel_eval(struct vr_tensor *t, bool ask, void *data) {
    vr_cancel *c = (vr_cancel *)data;
    (void)t;
    if (ask) {
        c->n++; /* nodes asked about, for tests */
        return c->flag != 0 || c->n % c->every == 0;
    }
    return c->flag == 0; /* false aborts the graph */
}

/* For benchmarks/bench_vreason.py: the cost of one callback invocation as llama.cpp's scheduler makes it
 * (from C, on this thread), for this hook or any other callback such as a ctypes one. Returns the
 * total seconds for n calls with ask=true on tensor t. */
#include <time.h>
VR_API double vr_time_callback(vr_eval_fn fn, struct vr_tensor *t, void *user_data, int64_t n) {
    struct timespec a, b;
    timespec_get(&a, TIME_UTC);
    for (int64_t i = 0; i < n; i++) fn(t, true, user_data);
    timespec_get(&b, TIME_UTC);
    return (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
}

#if !defined(_WIN32)
#include <unistd.h>
/* Gather rows of a tensor straight from the model file (the tail's LM-head rows). pread, not a memory
 * map: a map's fault-around would pull ~64 KB around each scattered row into the process's resident set
 * (150 MB for 2048 rows of a 3B head), where reading copies exactly the rows. Returns n, or -1-i if row
 * i could not be read. */
VR_API int64_t vr_read_rows(int fd, int64_t base, int64_t row_bytes, const int64_t *ids, int64_t n, uint8_t *out) {
    for (int64_t i = 0; i < n; i++) {
        int64_t done = 0;
        while (done < row_bytes) {
            ssize_t got = pread(fd, out + i * row_bytes + done, (size_t)(row_bytes - done), (off_t)(base + ids[i] * row_bytes + done));
            if (got <= 0) return -1 - i;
            done += got;
        }
    }
    return n;
}
#endif

/* A Python module only so that setuptools can build and install this file portably; Python reaches
 * the functions above through ctypes. */
static struct PyModuleDef vr_module = {PyModuleDef_HEAD_INIT, "_vrhook", "vreason value-cache hook (use via ctypes)", -1, NULL};
PyMODINIT_FUNC PyInit__vrhook(void) { return PyModule_Create(&vr_module); }
