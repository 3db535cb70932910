/*
 * gateway.dns._udpio: batched UDP I/O for the DNS listener (issue #12, "fewer syscalls per
 * reply where the platform allows"). Linux only; optional (gateway/dns/udp_batch.py is used
 * only when this imports, server.py falls back to the asyncio UdpProtocol otherwise).
 *
 * Why: through uvloop each query costs one recvfrom, one sendto and a Python callback; at
 * saturation that is more CPU than the gateway's own answer from the reply memo. recvmmsg and
 * sendmmsg move a whole batch per syscall.
 *
 * Contents:
 *   recv_batch(fd, max, size=65535) -> [(data, ip, sockaddr), ...]
 *       Up to `max` datagrams already queued on the non-blocking socket `fd` (MSG_DONTWAIT;
 *       [] when none). `ip` is the source address as text (inet_ntop, the form
 *       Resolver.handle takes), `sockaddr` the raw source address to reply to. A datagram
 *       longer than `size` (MSG_TRUNC) comes back with data None: never a silent truncation.
 *   send_batch(fd, [(reply, sockaddr), ...]) -> int
 *       Sends in order with sendmmsg; returns how many replies were consumed: all of them, or
 *       fewer when the socket buffer is full (EAGAIN) and the rest must wait for writability.
 *       A reply the kernel refuses for its own destination (EINVAL, EPERM, unreachable...) is
 *       skipped and counted as consumed, as the asyncio transport logs and drops it.
 *   Other errors raise OSError. Only Python.h and libc; C99 with the GNU socket extensions.
 *
 * The receive buffers (max x size bytes) are allocated once per process and grown only when
 * a caller asks for more; the GIL is held throughout (the calls never block), so one buffer
 * serves every socket.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_BATCH 1024
#define MAX_SIZE 65535

static char *rbuf;             /* MAX_BATCH slots at most, `rslot` bytes each */
static size_t rslots, rslot;
static struct mmsghdr rmsgs[MAX_BATCH];
static struct iovec riov[MAX_BATCH];
static struct sockaddr_storage rnames[MAX_BATCH];

static struct mmsghdr smsgs[MAX_BATCH];
static struct iovec siov[MAX_BATCH];

static int ensure_rbuf(size_t slots, size_t size) {
    if (rbuf != NULL && slots <= rslots && size == rslot) return 0;
    /* one mapping: pages a datagram never reaches stay untouched, so not resident */
    char *fresh = malloc(slots * size);
    if (fresh == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    free(rbuf);
    rbuf = fresh;
    rslots = slots;
    rslot = size;
    return 0;
}

static PyObject *address_text(const struct sockaddr_storage *sa) {
    char text[INET6_ADDRSTRLEN];
    const void *raw;
    if (sa->ss_family == AF_INET)
        raw = &((const struct sockaddr_in *)sa)->sin_addr;
    else if (sa->ss_family == AF_INET6)
        raw = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    else
        return PyUnicode_FromString("");
    if (inet_ntop(sa->ss_family, raw, text, sizeof text) == NULL)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyUnicode_FromString(text);
}

static PyObject *recv_batch(PyObject *self, PyObject *args) {
    int fd;
    Py_ssize_t max, size = MAX_SIZE;
    (void)self;
    if (!PyArg_ParseTuple(args, "in|n:recv_batch", &fd, &max, &size)) return NULL;
    if (max < 1 || max > MAX_BATCH) {
        PyErr_Format(PyExc_ValueError, "recv_batch: max must be 1..%d", MAX_BATCH);
        return NULL;
    }
    if (size < 12 || size > MAX_SIZE) {
        PyErr_Format(PyExc_ValueError, "recv_batch: size must be 12..%d", MAX_SIZE);
        return NULL;
    }
    if (ensure_rbuf((size_t)max, (size_t)size) < 0) return NULL;
    for (Py_ssize_t i = 0; i < max; i++) {
        riov[i].iov_base = rbuf + (size_t)i * rslot;
        riov[i].iov_len = (size_t)size;
        rmsgs[i].msg_hdr = (struct msghdr){
            .msg_name = &rnames[i], .msg_namelen = sizeof rnames[i],
            .msg_iov = &riov[i], .msg_iovlen = 1,
        };
        rmsgs[i].msg_len = 0;
    }
    int n;
    do {
        n = recvmmsg(fd, rmsgs, (unsigned)max, MSG_DONTWAIT, NULL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *out = PyList_New(n);
    if (out == NULL) return NULL;
    for (int i = 0; i < n; i++) {
        struct msghdr *h = &rmsgs[i].msg_hdr;
        PyObject *data;
        if (h->msg_flags & MSG_TRUNC) {
            data = Py_NewRef(Py_None);
        } else {
            data = PyBytes_FromStringAndSize(riov[i].iov_base, (Py_ssize_t)rmsgs[i].msg_len);
        }
        PyObject *ip = data ? address_text(&rnames[i]) : NULL;
        PyObject *name = ip ? PyBytes_FromStringAndSize((const char *)&rnames[i],
                                                        (Py_ssize_t)h->msg_namelen) : NULL;
        PyObject *item = name ? PyTuple_Pack(3, data, ip, name) : NULL;
        Py_XDECREF(data);
        Py_XDECREF(ip);
        Py_XDECREF(name);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    return out;
}

static PyObject *send_batch(PyObject *self, PyObject *args) {
    int fd;
    PyObject *replies;
    (void)self;
    if (!PyArg_ParseTuple(args, "iO!:send_batch", &fd, &PyList_Type, &replies)) return NULL;
    Py_ssize_t total = PyList_GET_SIZE(replies), done = 0;
    /* The list's items are held by the list; the caller does not mutate it during the call
     * (no Python code runs here), so the pointers below stay valid. */
    while (done < total) {
        Py_ssize_t count = total - done;
        if (count > MAX_BATCH) count = MAX_BATCH;
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *item = PyList_GET_ITEM(replies, done + i);
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
                !PyBytes_Check(PyTuple_GET_ITEM(item, 0)) ||
                !PyBytes_Check(PyTuple_GET_ITEM(item, 1))) {
                PyErr_SetString(PyExc_TypeError, "send_batch: items must be (bytes, bytes)");
                return NULL;
            }
            PyObject *reply = PyTuple_GET_ITEM(item, 0), *name = PyTuple_GET_ITEM(item, 1);
            if (PyBytes_GET_SIZE(name) > (Py_ssize_t)sizeof(struct sockaddr_storage)) {
                PyErr_SetString(PyExc_ValueError, "send_batch: sockaddr too long");
                return NULL;
            }
            siov[i].iov_base = PyBytes_AS_STRING(reply);
            siov[i].iov_len = (size_t)PyBytes_GET_SIZE(reply);
            smsgs[i].msg_hdr = (struct msghdr){
                .msg_name = PyBytes_AS_STRING(name),
                .msg_namelen = (socklen_t)PyBytes_GET_SIZE(name),
                .msg_iov = &siov[i], .msg_iovlen = 1,
            };
        }
        int n = sendmmsg(fd, smsgs, (unsigned)count, MSG_DONTWAIT);
        if (n > 0) {
            done += n;
            continue;
        }
        if (n == 0) break;  /* not expected from Linux; never spin */
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) break;
        if (errno == EBADF || errno == ENOTSOCK || errno == EFAULT || errno == ENOTCONN)
            return PyErr_SetFromErrno(PyExc_OSError);
        done += 1;  /* this reply's destination is refused: skip it, send the rest */
    }
    return PyLong_FromSsize_t(done);
}

static PyMethodDef module_methods[] = {
    {"recv_batch", recv_batch, METH_VARARGS,
     "recv_batch(fd, max, size=65535) -> [(data or None if truncated, ip, sockaddr), ...]"},
    {"send_batch", send_batch, METH_VARARGS,
     "send_batch(fd, [(reply, sockaddr), ...]) -> how many were consumed (fewer on EAGAIN)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef udpio_module = {
    PyModuleDef_HEAD_INIT, "gateway.dns._udpio",
    "Batched UDP I/O (recvmmsg/sendmmsg) for gateway.dns.udp_batch (optional, Linux only).",
    -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__udpio(void) {
    PyObject *mod = PyModule_Create(&udpio_module);
    if (mod == NULL) return NULL;
    if (PyModule_AddIntConstant(mod, "MAX_BATCH", MAX_BATCH) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
