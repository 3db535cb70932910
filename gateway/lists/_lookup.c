/*
 * gateway.lists._lookup: an optional C accelerator for ListIndex.match/probe (issue #12).
 *
 * Why: on an uncached query the pure-Python lookup spends ~1.4 us per name suffix on a
 * hashlib object, memoryview reads and bisect; here the same walk costs a fraction of that.
 * index.py's pure closures stay the reference and the fallback (no compiler, big-endian host,
 * SAFEGATE_PURE=1); this module must return exactly what they return.
 *
 * Contents:
 *   blake2b64(data) -> int   BLAKE2b (RFC 7693), digest_size 8, no key, read little-endian,
 *                            i.e. index.key_hash(data).
 *   Matcher(hi, lo, vals, dir, hi_bytes, val_bytes, shift, self_rules, subs_rules, combos)
 *       .match(key) / .probe(key) / .close()
 *
 * The arrays are read through buffers held until close(): ListIndex.close() calls close()
 * first so that its memoryviews can be released, and a lookup after close raises ValueError.
 * A non-empty bucket that ends past the arrays (a corrupt directory) raises ValueError at
 * lookup: nothing outside the arrays is ever read. Only Python.h; C99 (a GCC/Clang prefetch
 * builtin when available).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---- BLAKE2b, written from RFC 7693 sections 2 and 3 ---- */

static const uint64_t B2B_IV[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL, 0xA54FF53A5F1D36F1ULL,
    0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL, 0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL,
};

/* message word schedule; rounds 10 and 11 reuse rows 0 and 1 */
static const uint8_t B2B_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static inline uint64_t rotr64(uint64_t x, unsigned n) { return (x >> n) | (x << (64 - n)); }

/* byte-wise little-endian load: correct on any host, one load after optimisation */
static inline uint64_t load_le64(const uint8_t *p) {
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 |
           (uint64_t)p[7] << 56;
}

#define B2B_G(a, b, c, d, x, y)                                                               \
    do {                                                                                     \
        v[a] = v[a] + v[b] + (x);                                                            \
        v[d] = rotr64(v[d] ^ v[a], 32);                                                      \
        v[c] = v[c] + v[d];                                                                  \
        v[b] = rotr64(v[b] ^ v[c], 24);                                                      \
        v[a] = v[a] + v[b] + (y);                                                            \
        v[d] = rotr64(v[d] ^ v[a], 16);                                                      \
        v[c] = v[c] + v[d];                                                                  \
        v[b] = rotr64(v[b] ^ v[c], 63);                                                      \
    } while (0)

/* F: compress one 128-byte block; t is the byte count so far (< 2**64 here), last the flag */
static void b2b_compress(uint64_t h[8], const uint8_t block[128], uint64_t t, int last) {
    uint64_t v[16], m[16];
    for (int i = 0; i < 16; i++) m[i] = load_le64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = B2B_IV[i];
    }
    v[12] ^= t;  /* high word of the 128-bit counter stays 0: inputs are < 2**64 bytes */
    if (last) v[14] = ~v[14];
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = B2B_SIGMA[r];
        B2B_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        B2B_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        B2B_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        B2B_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        B2B_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        B2B_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        B2B_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        B2B_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* BLAKE2b-64 of data[0:len], as the little-endian integer of its 8-byte digest */
static uint64_t blake2b64(const uint8_t *data, size_t len) {
    uint64_t h[8];
    uint8_t block[128];
    memcpy(h, B2B_IV, sizeof h);
    h[0] ^= 0x01010000ULL ^ 8;  /* depth 1, fanout 1, key length 0, digest length 8 */
    size_t done = 0;
    /* every full block but the last is compressed unflagged; the final (maybe partial or
       empty) block is zero-padded and flagged, with t = the total length */
    while (len - done > 128) {
        b2b_compress(h, data + done, (uint64_t)(done + 128), 0);
        done += 128;
    }
    memset(block, 0, sizeof block);
    if (len > done) memcpy(block, data + done, len - done);
    b2b_compress(h, block, (uint64_t)len, 1);
    return h[0];  /* the first 8 output bytes are h[0] little-endian */
}

static PyObject *py_blake2b64(PyObject *module, PyObject *arg) {
    (void)module;
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0) return NULL;
    uint64_t h = blake2b64((const uint8_t *)buf.buf, (size_t)buf.len);
    PyBuffer_Release(&buf);
    return PyLong_FromUnsignedLongLong((unsigned long long)h);
}

/* ---- Matcher ---- */

enum { B_HI, B_LO, B_VALS, B_DIR, N_BUFS };

typedef struct {
    PyObject_HEAD
    Py_buffer bufs[N_BUFS];
    int open;
    const uint8_t *hi, *lo, *vals, *dir;
    Py_ssize_t count;   /* entries in hi/lo/vals */
    uint64_t ndir;      /* entries in dir: 2**dir_bits + 1 */
    int hi_bytes, val_bytes;
    unsigned shift;     /* 64 - dir_bits */
    uint64_t rmask;
    PyObject *self_rules, *subs_rules, *combos;  /* tuples */
} Matcher;

static inline uint32_t rd32(const uint8_t *p) { uint32_t x; memcpy(&x, p, 4); return x; }
static inline uint64_t rd64(const uint8_t *p) { uint64_t x; memcpy(&x, p, 8); return x; }
static inline uint16_t rd16(const uint8_t *p) { uint16_t x; memcpy(&x, p, 2); return x; }

static inline uint64_t hi_at(const Matcher *m, Py_ssize_t i) {
    return m->hi_bytes == 4 ? rd32(m->hi + 4 * i) : rd64(m->hi + 8 * i);
}

static inline Py_ssize_t val_at(const Matcher *m, Py_ssize_t i) {
    switch (m->val_bytes) {
    case 1: return m->vals[i];
    case 2: return rd16(m->vals + 2 * i);
    default: return (Py_ssize_t)rd32(m->vals + 4 * i);
    }
}

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)0)
#endif

/* A hash's bucket [*lo, *end) of the arrays: 0, or -2 with an exception set (corrupt dir).
   A decreasing pair is an empty bucket, as index.py's bisect reads it. */
static int bucket(const Matcher *m, uint64_t h, uint32_t *lo, uint32_t *end) {
    uint64_t b = h >> m->shift;
    if (b + 1 >= m->ndir) {  /* cannot happen: ndir == 2**(64 - shift) + 1 is checked */
        PyErr_SetString(PyExc_ValueError, "corrupt list index: bucket outside the directory");
        return -2;
    }
    *lo = rd32(m->dir + 4 * b);
    *end = rd32(m->dir + 4 * (b + 1));
    if (*lo < *end && (Py_ssize_t)*end > m->count) {
        PyErr_SetString(PyExc_ValueError, "corrupt list index: directory entry beyond count");
        return -2;
    }
    return 0;
}

/* Where hash h sits in its bucket [lo, end) (end <= count), or -1. Same walk as
   index._make_find: bisect the bucket's hi, then compare lo among the equal hi. */
static Py_ssize_t search(const Matcher *m, uint64_t h, uint32_t lo, uint32_t end) {
    if (lo >= end) return -1;
    uint64_t r = h & m->rmask, t = r >> 16;
    Py_ssize_t a = lo, z = end;
    while (a < z) {
        Py_ssize_t mid = a + (z - a) / 2;
        if (hi_at(m, mid) < t) a = mid + 1; else z = mid;
    }
    uint16_t low = (uint16_t)(r & 0xFFFF);
    for (Py_ssize_t i = a; i < (Py_ssize_t)end && hi_at(m, i) == t; i++) {
        if (rd16(m->lo + 2 * i) == low) return i;
    }
    return -1;
}

/* Where hash h is stored: its index, -1 if absent, -2 with an exception set. */
static Py_ssize_t find(const Matcher *m, uint64_t h) {
    uint32_t lo, end;
    if (bucket(m, h, &lo, &end) < 0) return -2;
    return search(m, h, lo, end);
}

/* combos[vals[i]] (borrowed), or NULL with IndexError as the pure path's list index gives */
static PyObject *rules_for(const Matcher *m, PyObject *table, Py_ssize_t i) {
    Py_ssize_t v = val_at(m, i);
    if (v >= PyTuple_GET_SIZE(table)) {
        PyErr_SetString(PyExc_IndexError, "corrupt list index: combo id out of range");
        return NULL;
    }
    return PyTuple_GET_ITEM(table, v);
}

static int check_open(const Matcher *m) {
    if (!m->open) {
        PyErr_SetString(PyExc_ValueError, "list index is closed");
        return -1;
    }
    return 0;
}

/* Append (off, rules) to out when entry i's rules for this level are not empty; -1 on error */
static int add_level(const Matcher *m, PyObject *out, PyObject *table, Py_ssize_t i,
                     Py_ssize_t off) {
    PyObject *rules = rules_for(m, table, i);
    if (rules == NULL) return -1;
    if (PyTuple_GET_SIZE(rules) == 0) return 0;  /* truthiness of a tuple, as in index.py */
    PyObject *pos = PyLong_FromSsize_t(off);
    if (pos == NULL) return -1;
    PyObject *pair = PyTuple_Pack(2, pos, rules);
    Py_DECREF(pos);
    if (pair == NULL) return -1;
    int rc = PyList_Append(out, pair);
    Py_DECREF(pair);
    return rc;
}

/* Suffixes looked up per batch: hashes first, then buckets, then searches, with each
   stage's memory prefetched while the previous one computes, so a big index's cache misses
   overlap instead of queueing one after another per level. */
#define BATCH 16

static PyObject *Matcher_match(Matcher *m, PyObject *key) {
    if (check_open(m) < 0) return NULL;
    if (!PyBytes_Check(key)) {
        PyErr_Format(PyExc_TypeError, "match() needs bytes, not %.100s", Py_TYPE(key)->tp_name);
        return NULL;
    }
    const uint8_t *k = (const uint8_t *)PyBytes_AS_STRING(key);
    Py_ssize_t n = PyBytes_GET_SIZE(key);
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    Py_ssize_t off = 0;  /* the next suffix to hash; -1 once the last one was */
    while (off >= 0) {
        Py_ssize_t offs[BATCH];
        uint64_t hs[BATCH];
        uint32_t los[BATCH], ends[BATCH];
        int count = 0;
        while (count < BATCH && off >= 0) {
            uint64_t h = blake2b64(k + off, (size_t)(n - off));
            PREFETCH(m->dir + 4 * (h >> m->shift));
            offs[count] = off;
            hs[count++] = h;
            const uint8_t *dot = off < n ? memchr(k + off, '.', (size_t)(n - off)) : NULL;
            off = dot == NULL ? -1 : (Py_ssize_t)(dot - k) + 1;
        }
        for (int j = 0; j < count; j++) {
            if (bucket(m, hs[j], &los[j], &ends[j]) < 0) goto fail;
            if (los[j] < ends[j]) {
                PREFETCH(m->hi + (size_t)m->hi_bytes * los[j]);
                PREFETCH(m->lo + 2 * (size_t)los[j]);
            }
        }
        for (int j = 0; j < count; j++) {
            Py_ssize_t i = search(m, hs[j], los[j], ends[j]);
            /* SELF rules at offset 0, SUBS rules above it */
            if (i >= 0 && add_level(m, out, offs[j] ? m->subs_rules : m->self_rules, i,
                                    offs[j]) < 0)
                goto fail;
        }
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *Matcher_probe(Matcher *m, PyObject *key) {
    if (check_open(m) < 0) return NULL;
    if (!PyBytes_Check(key)) {
        PyErr_Format(PyExc_TypeError, "probe() needs bytes, not %.100s", Py_TYPE(key)->tp_name);
        return NULL;
    }
    Py_ssize_t i = find(m, blake2b64((const uint8_t *)PyBytes_AS_STRING(key),
                                     (size_t)PyBytes_GET_SIZE(key)));
    if (i == -2) return NULL;
    if (i == -1) Py_RETURN_NONE;
    PyObject *combo = rules_for(m, m->combos, i);
    Py_XINCREF(combo);
    return combo;
}

static void release_all(Matcher *m) {
    if (m->open) {
        m->open = 0;
        for (int b = 0; b < N_BUFS; b++) PyBuffer_Release(&m->bufs[b]);
    }
}

static PyObject *Matcher_close(Matcher *m, PyObject *unused) {
    (void)unused;
    release_all(m);
    Py_RETURN_NONE;
}

static PyObject *Matcher_closed(Matcher *m, void *unused) {
    (void)unused;
    return PyBool_FromLong(!m->open);
}

static int Matcher_init(Matcher *m, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"hi", "lo", "vals", "dir", "hi_bytes", "val_bytes", "shift",
                             "self_rules", "subs_rules", "combos", NULL};
    PyObject *objs[N_BUFS], *self_rules, *subs_rules, *combos;
    int hi_bytes, val_bytes, shift;
    const uint16_t probe_endian = 1;
    if (*(const uint8_t *)&probe_endian != 1) {
        PyErr_SetString(PyExc_RuntimeError, "the C list lookup needs a little-endian host");
        return -1;
    }
    if (m->open) {
        PyErr_SetString(PyExc_RuntimeError, "Matcher is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOiiiOOO", kwlist, &objs[B_HI], &objs[B_LO],
                                     &objs[B_VALS], &objs[B_DIR], &hi_bytes, &val_bytes, &shift,
                                     &self_rules, &subs_rules, &combos))
        return -1;
    if (!(hi_bytes == 4 || hi_bytes == 8) || !(val_bytes == 1 || val_bytes == 2 ||
                                               val_bytes == 4)) {
        PyErr_SetString(PyExc_ValueError, "hi_bytes must be 4 or 8, val_bytes 1, 2 or 4");
        return -1;
    }
    /* dir_bits in 1..47, and a uint32 hi must hold the residue's top (shift - 16) bits */
    if (shift < 17 || shift > 63 || (hi_bytes == 4 && shift > 48)) {
        PyErr_SetString(PyExc_ValueError, "shift out of range for this hi width");
        return -1;
    }
    PyObject *tuples[3];
    PyObject *lists[3] = {self_rules, subs_rules, combos};
    for (int j = 0; j < 3; j++) {
        tuples[j] = PySequence_Tuple(lists[j]);
        if (tuples[j] == NULL) {
            for (int q = 0; q < j; q++) Py_DECREF(tuples[q]);
            return -1;
        }
    }
    int got = 0;
    for (; got < N_BUFS; got++) {
        if (PyObject_GetBuffer(objs[got], &m->bufs[got], PyBUF_SIMPLE) < 0) goto fail;
    }
    Py_ssize_t count = m->bufs[B_LO].len / 2;
    uint64_t ndir = (uint64_t)1 << (64 - shift);
    if (m->bufs[B_LO].len != 2 * count || m->bufs[B_HI].len != hi_bytes * count ||
        m->bufs[B_VALS].len != val_bytes * count ||
        (uint64_t)m->bufs[B_DIR].len != 4 * (ndir + 1) || count > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "list index arrays do not match their sizes");
        goto fail;
    }
    m->hi = m->bufs[B_HI].buf;
    m->lo = m->bufs[B_LO].buf;
    m->vals = m->bufs[B_VALS].buf;
    m->dir = m->bufs[B_DIR].buf;
    m->count = count;
    m->ndir = ndir + 1;
    m->hi_bytes = hi_bytes;
    m->val_bytes = val_bytes;
    m->shift = (unsigned)shift;
    m->rmask = ((uint64_t)1 << shift) - 1;
    Py_XSETREF(m->self_rules, tuples[0]);
    Py_XSETREF(m->subs_rules, tuples[1]);
    Py_XSETREF(m->combos, tuples[2]);
    m->open = 1;
    return 0;
fail:
    while (got-- > 0) PyBuffer_Release(&m->bufs[got]);
    for (int j = 0; j < 3; j++) Py_DECREF(tuples[j]);
    return -1;
}

static void Matcher_dealloc(Matcher *m) {
    release_all(m);
    Py_CLEAR(m->self_rules);
    Py_CLEAR(m->subs_rules);
    Py_CLEAR(m->combos);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static PyMethodDef Matcher_methods[] = {
    {"match", (PyCFunction)Matcher_match, METH_O,
     "match(key) -> [(offset, rules), ...] for each suffix level with rules (index.py)."},
    {"probe", (PyCFunction)Matcher_probe, METH_O, "probe(key) -> the exact key's combo or None."},
    {"close", (PyCFunction)Matcher_close, METH_NOARGS,
     "Release the index buffers; later lookups raise ValueError."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Matcher_getset[] = {
    {"closed", (getter)Matcher_closed, NULL, "True once close() ran.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MatcherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.lists._lookup.Matcher",
    .tp_basicsize = sizeof(Matcher),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Lookups over a compiled list index's arrays (see gateway/lists/index.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Matcher_init,
    .tp_dealloc = (destructor)Matcher_dealloc,
    .tp_methods = Matcher_methods,
    .tp_getset = Matcher_getset,
};

static PyMethodDef module_methods[] = {
    {"blake2b64", py_blake2b64, METH_O,
     "blake2b64(data) -> int.from_bytes(blake2b(data, digest_size=8).digest(), 'little')."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef lookup_module = {
    PyModuleDef_HEAD_INIT, "gateway.lists._lookup",
    "C accelerator for gateway.lists.index (optional; index.py falls back to pure Python).",
    -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__lookup(void) {
    if (PyType_Ready(&MatcherType) < 0) return NULL;
    PyObject *mod = PyModule_Create(&lookup_module);
    if (mod == NULL) return NULL;
    Py_INCREF(&MatcherType);
    if (PyModule_AddObject(mod, "Matcher", (PyObject *)&MatcherType) < 0) {
        Py_DECREF(&MatcherType);
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
