/*
 * gateway.dns._fastparse: optional C for dns/fastpath.py's byte work (issue #12).
 *
 * Why: on an uncached blocked query the Python parse (label walk, slices, join, lower, OPT
 * walk) was the largest single part of Resolver.handle after the C list lookup, and the reply
 * was assembled from about ten small bytes objects. fastpath.py's `parse` and `reply` stay the
 * reference and the fallback (no compiler, SAFEGATE_PURE=1); this module must return exactly
 * what they return, None in exactly the same cases, for every input (tests/test_fastparse.py
 * compares both over random and mutated packets).
 *
 * Contents:
 *   parse(data: bytes) -> (key, end, qtype, edns, do) | None
 *   blocked_reply(data, end, parts, edns, offset, ede, prefix, key, suffix) -> bytes
 *       fastpath.reply's bytes (answers.blocked_body's body behind the query's ID, RD/CD and
 *       question) in one allocation instead of about ten; `parts` is BlockAnswers.parts_for's.
 *
 * Every byte read is checked against len(data) first; the key is written straight into the
 * bytes object it returns (at most 254 bytes, a name's wire form being at most 255).
 * blocked_reply checks its arguments' types and ranges (TypeError / ValueError) and copies
 * only within them.
 * Only Python.h and the C library; C99.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* the longest question name fastpath.py accepts: pos - 12 <= 254 at the root label */
#define MAX_WIRE 254

static PyObject *parse(PyObject *module, PyObject *arg) {
    (void)module;
    if (!PyBytes_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "parse() needs bytes, not %.100s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    const uint8_t *d = (const uint8_t *)PyBytes_AS_STRING(arg);
    Py_ssize_t n = PyBytes_GET_SIZE(arg);
    /* QR and opcode clear; QDCOUNT 1, ANCOUNT 0, NSCOUNT 0; ARCOUNT 0 or 1 */
    if (n < 17 || (d[2] & 0xF8) || d[4] || d[5] != 1 || d[6] || d[7] || d[8] || d[9] ||
        d[10] || d[11] > 1)
        Py_RETURN_NONE;
    int arcount = d[11];
    /* Label walk. fastpath.py walks on past 12 + 254 and refuses afterwards; stopping at the
       first label that ends beyond it gives the same None sooner. Labels are only checked
       here (no dot, ASCII); they are copied once the whole shape is known to fit. */
    Py_ssize_t pos = 12;
    unsigned length = d[12];
    if (length == 0) Py_RETURN_NONE;  /* the root: no labels */
    while (length) {
        if (length > 63) Py_RETURN_NONE;
        Py_ssize_t start = pos + 1;
        pos = start + length;
        if (pos >= n || pos > 12 + MAX_WIRE) Py_RETURN_NONE;
        for (Py_ssize_t i = start; i < pos; i++) {
            /* a dot inside a label (wire.py escapes it); non-ASCII (EDE text) */
            if (d[i] == '.' || d[i] >= 0x80) Py_RETURN_NONE;
        }
        length = d[pos];
    }
    Py_ssize_t end = pos + 5;
    if (end > n || d[pos + 3] || d[pos + 4] != 1) Py_RETURN_NONE;  /* class IN only */
    int do_bit = 0;
    if (arcount) {
        /* exactly one OPT (root owner, TYPE OPT, version 0) ending the packet, its options
           walked so that a malformed one is left to the full parser's FORMERR */
        if (end + 11 > n || d[end] || d[end + 1] || d[end + 2] != 0x29 || d[end + 6])
            Py_RETURN_NONE;
        Py_ssize_t opt = end + 11;
        Py_ssize_t stop = opt + ((d[end + 9] << 8) | d[end + 10]);
        if (stop != n) Py_RETURN_NONE;
        while (opt < stop) {
            if (opt + 4 > stop) Py_RETURN_NONE;
            opt += 4 + ((d[opt + 2] << 8) | d[opt + 3]);
        }
        if (opt != stop) Py_RETURN_NONE;
        do_bit = (d[end + 7] & 0x80) != 0;
    } else if (end != n) {
        Py_RETURN_NONE;
    }
    /* the key: labels joined by dots, ASCII lowercased; pos - 13 bytes (no leading length) */
    PyObject *key = PyBytes_FromStringAndSize(NULL, pos - 13);
    if (key == NULL) return NULL;
    uint8_t *k = (uint8_t *)PyBytes_AS_STRING(key);
    for (Py_ssize_t i = 13; i < pos; i++) {
        uint8_t c = d[i];
        k[i - 13] = c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
    }
    /* the length bytes between labels become dots */
    for (Py_ssize_t p = 12 + 1 + d[12]; p < pos; p += 1 + d[p]) k[p - 13] = '.';
    PyObject *out = PyTuple_New(5);
    if (out == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    PyObject *endo = PyLong_FromSsize_t(end);
    PyObject *qtype = PyLong_FromLong((d[pos + 1] << 8) | d[pos + 2]);
    PyTuple_SET_ITEM(out, 0, key);
    if (endo == NULL || qtype == NULL) {
        Py_XDECREF(endo);
        Py_XDECREF(qtype);
        Py_DECREF(out);  /* frees key; the other slots are still NULL */
        return NULL;
    }
    PyTuple_SET_ITEM(out, 1, endo);
    PyTuple_SET_ITEM(out, 2, qtype);
    PyTuple_SET_ITEM(out, 3, PyBool_FromLong(arcount));
    PyTuple_SET_ITEM(out, 4, PyBool_FromLong(do_bit));
    return out;
}

/* ---- blocked_reply ---- */

#define FLAG_RD 0x0100
#define FLAG_CD 0x0010
#define OPT_EDE 15
#define EDE_TEXT_MAX 200 /* answers.py keeps the first 200 bytes of an EDE text */

static int want_bytes(PyObject *o, const char *what) {
    if (PyBytes_Check(o)) return 0;
    PyErr_Format(PyExc_TypeError, "blocked_reply() %s must be bytes, not %.100s", what,
                 Py_TYPE(o)->tp_name);
    return -1;
}

static inline uint8_t *put16(uint8_t *p, unsigned v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
    return p + 2;
}

static inline uint8_t *put(uint8_t *p, PyObject *b, Py_ssize_t from, Py_ssize_t len) {
    if (len > 0) memcpy(p, PyBytes_AS_STRING(b) + from, (size_t)len);
    return p + (len > 0 ? len : 0);
}

/* blocked_reply(data, end, parts, edns, offset, ede, prefix, key, suffix) -> bytes: in one
   allocation, what fastpath.blocked's Python branch builds from answers.blocked_body. */
static PyObject *blocked_reply(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 9) {
        PyErr_Format(PyExc_TypeError, "blocked_reply() takes 9 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *data = args[0], *parts = args[2], *prefix = args[6], *key = args[7],
             *suffix = args[8];
    if (want_bytes(data, "data") < 0 || want_bytes(prefix, "prefix") < 0 ||
        want_bytes(key, "key") < 0 || want_bytes(suffix, "suffix") < 0)
        return NULL;
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    Py_ssize_t end = PyLong_AsSsize_t(args[1]);
    if (end == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t offset = PyLong_AsSsize_t(args[4]);
    if (offset == -1 && PyErr_Occurred()) return NULL;
    long ede = PyLong_AsLong(args[5]);
    if (ede == -1 && PyErr_Occurred()) return NULL;
    int edns = PyObject_IsTrue(args[3]);
    if (edns < 0) return NULL;
    if (end < 12 || end > n || offset < 0 || ede < 0 || ede > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "blocked_reply(): end, offset or ede out of range");
        return NULL;
    }
    if (!PyTuple_Check(parts) || PyTuple_GET_SIZE(parts) != 5) {
        PyErr_SetString(PyExc_TypeError, "blocked_reply() parts must be a 5-tuple");
        return NULL;
    }
    long flags = PyLong_AsLong(PyTuple_GET_ITEM(parts, 0));
    if (flags == -1 && PyErr_Occurred()) return NULL;
    if (flags < 0 || flags > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "blocked_reply(): flags out of range");
        return NULL;
    }
    PyObject *counts = PyTuple_GET_ITEM(parts, 1), *records = PyTuple_GET_ITEM(parts, 2),
             *soa = PyTuple_GET_ITEM(parts, 3), *opt_head = PyTuple_GET_ITEM(parts, 4);
    if (want_bytes(counts, "counts") < 0 || want_bytes(records, "records") < 0 ||
        want_bytes(soa, "soa") < 0 || want_bytes(opt_head, "opt_head") < 0)
        return NULL;
    const uint8_t *d = (const uint8_t *)PyBytes_AS_STRING(data);
    Py_ssize_t soa_len = PyBytes_GET_SIZE(soa);
    /* a negative answer's SOA replaces the records, its owner a pointer to the matched entry */
    Py_ssize_t rec_len = soa_len ? 2 + soa_len : PyBytes_GET_SIZE(records);
    Py_ssize_t key_len = PyBytes_GET_SIZE(key);
    Py_ssize_t tail = offset < key_len ? key_len - offset : 0;  /* key[offset:] */
    Py_ssize_t text_len = 0, text_prefix = 0, text_key = 0, text_suffix = 0;
    if (edns && ede) {
        text_prefix = PyBytes_GET_SIZE(prefix);
        text_key = tail;
        text_suffix = PyBytes_GET_SIZE(suffix);
        Py_ssize_t room = EDE_TEXT_MAX;  /* text[:200] */
        if (text_prefix > room) text_prefix = room;
        room -= text_prefix;
        if (text_key > room) text_key = room;
        room -= text_key;
        if (text_suffix > room) text_suffix = room;
        text_len = text_prefix + text_key + text_suffix;
    }
    Py_ssize_t opt_len = edns ? PyBytes_GET_SIZE(opt_head) + 2 + (ede ? 6 + text_len : 0) : 0;
    Py_ssize_t total = 4 + PyBytes_GET_SIZE(counts) + (end - 12) + rec_len + opt_len;
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) return NULL;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    p[0] = d[0];
    p[1] = d[1];
    p = put16(p + 2, (unsigned)flags | (((unsigned)d[2] << 8 | d[3]) & (FLAG_RD | FLAG_CD)));
    p = put(p, counts, 0, PyBytes_GET_SIZE(counts));
    p = put(p, data, 12, end - 12);
    if (soa_len) {
        p = put16(p, offset < 256 ? 0xC000 | (unsigned)(12 + offset) : 0xC00C);
        p = put(p, soa, 0, soa_len);
    } else {
        p = put(p, records, 0, rec_len);
    }
    if (edns) {
        p = put(p, opt_head, 0, PyBytes_GET_SIZE(opt_head));
        if (ede) {
            p = put16(p, (unsigned)(6 + text_len));
            p = put16(p, OPT_EDE);
            p = put16(p, (unsigned)(2 + text_len));
            p = put16(p, (unsigned)ede);
            p = put(p, prefix, 0, text_prefix);
            p = put(p, key, offset, text_key);
            p = put(p, suffix, 0, text_suffix);
        } else {
            p = put16(p, 0);
        }
    }
    return out;
}

static PyMethodDef module_methods[] = {
    {"parse", parse, METH_O,
     "parse(data) -> (key, end, qtype, edns, do) or None, exactly as dns/fastpath.parse."},
    {"blocked_reply", (PyCFunction)(void (*)(void))blocked_reply, METH_FASTCALL,
     "blocked_reply(data, end, parts, edns, offset, ede, prefix, key, suffix) -> bytes, "
     "exactly as dns/fastpath.py's Python reply."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastparse_module = {
    PyModuleDef_HEAD_INIT, "gateway.dns._fastparse",
    "C version of gateway.dns.fastpath.parse (optional; fastpath.py falls back to Python).",
    -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastparse(void) { return PyModule_Create(&fastparse_module); }
