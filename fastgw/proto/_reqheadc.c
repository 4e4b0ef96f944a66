/* A plain request head read in C: `read_head`, the fast path of fastgw/proto/h1.py's RequestReader.
 *
 * Why C (issue 18): through httptools, llhttp calls back into Python for the message's start, its target, each
 * header's name and value and the head's end, and the reader then asks it for the method, the version and
 * keep-alive: ~16,000 instructions of a non-streamed request's ~125,000, and on the path to its first byte. Here
 * one pass over the head builds the reader's header list.
 *
 * Only a strict subset is read, the heads SDKs send: `METHOD SP /target SP HTTP/1.1 CRLF` with one of seven methods
 * and an origin-form target of visible ASCII (no `#`), then `name: value CRLF` lines (name: RFC 9110 tokens, value:
 * visible ASCII, SP and HTAB) and the blank line, the head no longer than `max_bytes` and with at most
 * `max_headers` fields, a Content-Length (if any) once and of 1 to 15 digits, a Connection (if any) `keep-alive`,
 * and no Transfer-Encoding, Upgrade, Expect or Proxy-Connection field. For anything else, a head not whole in
 * `data` included, it returns None and the reader gives the message to llhttp, whose answer (the request, a 400,
 * a 501, a 431...) is the one the client gets. tests/proto/test_reqhead.py holds the reader's requests and errors
 * equal with and without it, over hostile corpora and every split.
 *
 * `read_head(data, start, max_bytes, max_headers)` -> (method, target, headers, end): the method as a str, the
 * target as bytes, the fields as a list of (lower-cased name, value without its surrounding SP/HTAB), and the offset
 * just past the blank line.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* RFC 9110 §5.6.2 tchar; a target's bytes (visible ASCII but '#'); a value's bytes (visible ASCII, SP, HTAB). */
static unsigned char tchar[256], target_ok[256], value_ok[256];

static const char *const METHODS[] = {"GET", "POST", "PUT", "HEAD", "PATCH", "DELETE", "OPTIONS"};
#define N_METHODS ((int)(sizeof METHODS / sizeof METHODS[0]))
static PyObject *method_str[N_METHODS];

/* The fields that frame the message or change the connection: llhttp decides any head holding one, but a
 * Content-Length or a `Connection: keep-alive`, which are read here. */
enum { PLAIN, LENGTH, CONNECTION, REFUSED };

static int field_kind(const char *name, Py_ssize_t n) {
    switch (n) {
    case 6: return memcmp(name, "expect", 6) == 0 ? REFUSED : PLAIN;
    case 7: return memcmp(name, "upgrade", 7) == 0 ? REFUSED : PLAIN;
    case 10: return memcmp(name, "connection", 10) == 0 ? CONNECTION : PLAIN;
    case 14: return memcmp(name, "content-length", 14) == 0 ? LENGTH : PLAIN;
    case 16: return memcmp(name, "proxy-connection", 16) == 0 ? REFUSED : PLAIN;
    case 17: return memcmp(name, "transfer-encoding", 17) == 0 ? REFUSED : PLAIN;
    default: return PLAIN;
    }
}

/* The head's method at p (followed by SP), as an index of METHODS, or -1. */
static int method_at(const unsigned char *p, const unsigned char *e) {
    for (int i = 0; i < N_METHODS; i++) {
        size_t n = strlen(METHODS[i]);
        if ((size_t)(e - p) > n && p[n] == ' ' && memcmp(p, METHODS[i], n) == 0)
            return i;
    }
    return -1;
}

PyDoc_STRVAR(read_head_doc,
"read_head(data, start, max_bytes, max_headers) -> (method, target, headers, end) | None\n\n"
"The plain request head at data[start:], or None for llhttp to read it (see the source's head comment).");

static PyObject *rh_read_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyBytes_CheckExact(args[0]) || !PyLong_CheckExact(args[1]) || !PyLong_CheckExact(args[2]) ||
        !PyLong_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "read_head(data: bytes, start: int, max_bytes: int, max_headers: int)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), max_bytes = PyLong_AsSsize_t(args[2]);
    Py_ssize_t max_headers = PyLong_AsSsize_t(args[3]);
    if ((start == -1 || max_bytes == -1 || max_headers == -1) && PyErr_Occurred())
        return NULL;
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    if (start < 0 || start > size) {
        PyErr_SetString(PyExc_ValueError, "read_head: start outside data");
        return NULL;
    }
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    const unsigned char *p = b + start, *e = b + size;
    if (max_bytes >= 0 && e - p > max_bytes)
        e = p + max_bytes;  /* a head must end within the limit: past it llhttp reads (and refuses) it */
    int m = method_at(p, e);
    if (m < 0)
        Py_RETURN_NONE;
    p += strlen(METHODS[m]) + 1;
    const unsigned char *t = p;
    if (p >= e || *p != '/')
        Py_RETURN_NONE;
    while (p < e && target_ok[*p])
        p++;
    if (e - p < 11 || memcmp(p, " HTTP/1.1\r\n", 11) != 0)
        Py_RETURN_NONE;
    Py_ssize_t target_len = p - t;
    p += 11;
    PyObject *headers = PyList_New(0);
    if (headers == NULL)
        return NULL;
    int lengths = 0;
    for (;;) {
        if (e - p < 2)
            goto plain_none;
        if (p[0] == '\r') {
            if (p[1] != '\n')
                goto plain_none;
            p += 2;
            break;
        }
        const unsigned char *name = p;
        while (p < e && tchar[*p])
            p++;
        Py_ssize_t nl = p - name;
        if (nl == 0 || p >= e || *p != ':' || PyList_GET_SIZE(headers) >= max_headers)
            goto plain_none;
        p++;
        while (p < e && (*p == ' ' || *p == '\t'))
            p++;
        const unsigned char *v = p;
        while (p < e && value_ok[*p])
            p++;
        if (e - p < 2 || p[0] != '\r' || p[1] != '\n')
            goto plain_none;
        const unsigned char *ve = p;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        p += 2;
        PyObject *lname = PyBytes_FromStringAndSize(NULL, nl);
        if (lname == NULL)
            goto fail;
        char *ln = PyBytes_AS_STRING(lname);
        for (Py_ssize_t i = 0; i < nl; i++) {
            unsigned char c = name[i];
            ln[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        }
        Py_ssize_t vl = ve - v;
        int kind = field_kind(ln, nl);
        if (kind == REFUSED || (kind == LENGTH && (++lengths > 1 || vl < 1 || vl > 15)) ||
            (kind == CONNECTION && (vl != 10 || PyOS_strnicmp((const char *)v, "keep-alive", 10) != 0))) {
            Py_DECREF(lname);
            goto plain_none;
        }
        if (kind == LENGTH) {
            for (Py_ssize_t i = 0; i < vl; i++) {
                if (v[i] < '0' || v[i] > '9') {
                    Py_DECREF(lname);
                    goto plain_none;
                }
            }
        }
        PyObject *value = PyBytes_FromStringAndSize((const char *)v, vl);
        if (value == NULL) {
            Py_DECREF(lname);
            goto fail;
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(lname);
            Py_DECREF(value);
            goto fail;
        }
        PyTuple_SET_ITEM(pair, 0, lname);
        PyTuple_SET_ITEM(pair, 1, value);
        int r = PyList_Append(headers, pair);
        Py_DECREF(pair);
        if (r < 0)
            goto fail;
    }
    PyObject *target = PyBytes_FromStringAndSize((const char *)t, target_len);
    if (target == NULL)
        goto fail;
    PyObject *out = PyTuple_New(4);
    PyObject *end = PyLong_FromSsize_t(p - b);
    if (out == NULL || end == NULL) {
        Py_XDECREF(out);
        Py_XDECREF(end);
        Py_DECREF(target);
        goto fail;
    }
    Py_INCREF(method_str[m]);
    PyTuple_SET_ITEM(out, 0, method_str[m]);
    PyTuple_SET_ITEM(out, 1, target);
    PyTuple_SET_ITEM(out, 2, headers);
    PyTuple_SET_ITEM(out, 3, end);
    return out;
plain_none:
    Py_DECREF(headers);
    Py_RETURN_NONE;
fail:
    Py_DECREF(headers);
    return NULL;
}

static PyMethodDef methods[] = {
    {"read_head", (PyCFunction)(void (*)(void))rh_read_head, METH_FASTCALL, read_head_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fastgw.proto._reqheadc",
    "A plain request head read in C (see the source's head comment).", -1, methods,
};

PyMODINIT_FUNC PyInit__reqheadc(void) {
    const char *tc = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    for (const char *c = tc; *c; c++)
        tchar[(unsigned char)*c] = 1;
    for (int c = 0x21; c < 0x7f; c++)
        target_ok[c] = value_ok[c] = 1;
    target_ok['#'] = 0;
    value_ok[' '] = value_ok['\t'] = 1;
    for (int i = 0; i < N_METHODS; i++) {
        method_str[i] = PyUnicode_InternFromString(METHODS[i]);
        if (method_str[i] == NULL)
            return NULL;
    }
    return PyModule_Create(&module);
}
