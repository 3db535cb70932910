/*
 * gateway.dns._fastparse: an optional C version of dns/fastpath.py's `parse` (issue #12).
 *
 * Why: on an uncached blocked query the Python parse (label walk, slices, join, lower, OPT
 * walk) was the largest single part of Resolver.handle after the C list lookup. fastpath.py's
 * `parse` stays the reference and the fallback (no compiler, SAFEGATE_PURE=1); this module
 * must return exactly what it returns, None in exactly the same cases, for every input
 * (tests/test_fastparse.py compares both over random and mutated packets).
 *
 * Contents:
 *   parse(data: bytes) -> (key, end, qtype, edns, do) | None
 *
 * Every byte read is checked against len(data) first; the key is written straight into the
 * bytes object it returns (at most 254 bytes, a name's wire form being at most 255).
 * Only Python.h; C99.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

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

static PyMethodDef module_methods[] = {
    {"parse", parse, METH_O,
     "parse(data) -> (key, end, qtype, edns, do) or None, exactly as dns/fastpath.parse."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastparse_module = {
    PyModuleDef_HEAD_INIT, "gateway.dns._fastparse",
    "C version of gateway.dns.fastpath.parse (optional; fastpath.py falls back to Python).",
    -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastparse(void) { return PyModule_Create(&fastparse_module); }
