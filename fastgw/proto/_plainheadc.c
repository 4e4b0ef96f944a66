/* Plain HTTP/1.1 heads read in C: a client's request head (`request`, the fast path of fastgw/proto/h1.py's
 * RequestReader) and an upstream's response head (`response`, of fastgw/proto/client.py's UpstreamConnection).
 *
 * Why C (issue 18): through httptools, llhttp calls back into Python for the message's start, its target or status,
 * each header's name and value and the head's end, and the reader then asks it for the method, the version and
 * keep-alive: ~16,000 instructions of a non-streamed request's ~125,000 for the request's head, on the path to its
 * first byte, and ~10,000 for the response's (6,900 with its head read here, 2,500 of them this reader's:
 * bench/RESULTS.md, 2026-12-07 03:30). Here one pass over the head builds the reader's header list.
 *
 * Only a strict subset is read, the heads SDKs and providers send; for anything else, a head not whole in `data`
 * included, a reader returns None and the caller gives the message to llhttp, whose answer (the request, a 400, a
 * 501, a 431, a bad response...) is the one that stands. Both: field lines `name: value CRLF` (name: RFC 9110
 * tokens, value: visible ASCII, SP and HTAB), then the blank line, the head no longer than `max_bytes` and with at
 * most `max_headers` fields, a Content-Length (if any) once and of 1 to 15 digits, a Connection (if any)
 * `keep-alive`, no Upgrade or Proxy-Connection; a framing field's value with nothing after it but its CR LF.
 * - request: `METHOD SP /target SP HTTP/1.1 CRLF`, one of seven methods and an origin-form target of visible ASCII
 *   but `#`; no Transfer-Encoding or Expect. The values lose their surrounding SP/HTAB (as h1.py's `on_header`).
 * - response: `HTTP/1.1 SP 3DIGIT SP reason CRLF`, a status 200-599 but 204 and 304; either a Content-Length or one
 *   Transfer-Encoding `chunked` (any case). The values lose their leading SP/HTAB only (as llhttp gives them).
 * tests/proto/test_plainhead.py and tests/proto/test_client_chunks.py hold the readers' answers equal with and
 * without them, over hostile corpora, mutations and every split.
 *
 * `request(data, start, max_bytes, max_headers)` -> (method, target, headers, end); `response(data, start,
 * max_bytes, max_headers)` -> (status, headers, length, end), length -1 for a chunked body. The method is a str,
 * the fields a list of (lower-cased name, value), `end` the offset just past the blank line.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* RFC 9110 §5.6.2 tchar; a target's bytes (visible ASCII but '#'); a value's bytes (visible ASCII, SP, HTAB). */
static unsigned char tchar[256], target_ok[256], value_ok[256];

static const char *const METHODS[] = {"GET", "POST", "PUT", "HEAD", "PATCH", "DELETE", "OPTIONS"};
#define N_METHODS ((int)(sizeof METHODS / sizeof METHODS[0]))
static PyObject *method_str[N_METHODS];

/* The fields that frame the message or change the connection. */
enum { PLAIN, LENGTH, CONNECTION, CODING, REFUSED };

static int field_kind(const char *name, Py_ssize_t n, int response) {
    switch (n) {
    case 6: return !response && memcmp(name, "expect", 6) == 0 ? REFUSED : PLAIN;
    case 7: return memcmp(name, "upgrade", 7) == 0 ? REFUSED : PLAIN;
    case 10: return memcmp(name, "connection", 10) == 0 ? CONNECTION : PLAIN;
    case 14: return memcmp(name, "content-length", 14) == 0 ? LENGTH : PLAIN;
    case 16: return memcmp(name, "proxy-connection", 16) == 0 ? REFUSED : PLAIN;
    case 17:
        if (memcmp(name, "transfer-encoding", 17) != 0)
            return PLAIN;
        return response ? CODING : REFUSED;
    default: return PLAIN;
    }
}

/* The field lines at *pp through the blank line: a new list, *pp moved past the blank line, *length the
 * Content-Length (-1: none) and *chunked the count of `chunked` codings; Py_None (a new reference) for a head that
 * is not plain, NULL with an exception set on an allocation failure. */
static PyObject *fields(const unsigned char **pp, const unsigned char *e, Py_ssize_t max_headers, int response,
                        Py_ssize_t *length, int *chunked) {
    const unsigned char *p = *pp;
    PyObject *headers = PyList_New(0);
    if (headers == NULL)
        return NULL;
    *length = -1;
    *chunked = 0;
    for (;;) {
        if (e - p < 2)
            goto not_plain;
        if (p[0] == '\r') {
            if (p[1] != '\n')
                goto not_plain;
            *pp = p + 2;
            return headers;
        }
        const unsigned char *name = p;
        while (p < e && tchar[*p])
            p++;
        Py_ssize_t nl = p - name;
        if (nl == 0 || p >= e || *p != ':' || PyList_GET_SIZE(headers) >= max_headers)
            goto not_plain;
        p++;
        while (p < e && (*p == ' ' || *p == '\t'))
            p++;
        const unsigned char *v = p;
        while (p < e && value_ok[*p])
            p++;
        if (e - p < 2 || p[0] != '\r' || p[1] != '\n')
            goto not_plain;
        const unsigned char *ve = p;  /* the value's end before its trailing SP/HTAB */
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        /* vl: the value as a field is read (trailing SP/HTAB trimmed for requests, kept for responses, as llhttp
         * gives them); rl: as it stands, which a framing field's value must be whole (llhttp's reading of "chunked\t"
         * or "5 " is its own). */
        Py_ssize_t rl = p - v, vl = response ? rl : ve - v;
        p += 2;
        PyObject *lname = PyBytes_FromStringAndSize(NULL, nl);
        if (lname == NULL)
            goto fail;
        char *ln = PyBytes_AS_STRING(lname);
        for (Py_ssize_t i = 0; i < nl; i++) {
            unsigned char c = name[i];
            ln[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        }
        int kind = field_kind(ln, nl, response);
        int plain = kind == PLAIN;
        if (kind == LENGTH && *length < 0 && rl >= 1 && rl <= 15) {
            Py_ssize_t n = 0;
            plain = 1;
            for (Py_ssize_t i = 0; i < rl && plain; i++) {
                plain = v[i] >= '0' && v[i] <= '9';
                n = n * 10 + (v[i] - '0');
            }
            *length = n;
        } else if (kind == CONNECTION) {
            plain = rl == 10 && PyOS_strnicmp((const char *)v, "keep-alive", 10) == 0;
        } else if (kind == CODING) {
            plain = rl == 7 && PyOS_strnicmp((const char *)v, "chunked", 7) == 0 && ++*chunked == 1;
        }
        if (!plain) {
            Py_DECREF(lname);
            goto not_plain;
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
not_plain:
    Py_DECREF(headers);
    Py_RETURN_NONE;
fail:
    Py_DECREF(headers);
    return NULL;
}

/* The arguments both readers take; the head's bounds in *p and *e (e: at most max_bytes past the start). */
static int head_args(PyObject *const *args, Py_ssize_t nargs, const char *usage, const unsigned char **p,
                     const unsigned char **e, Py_ssize_t *max_headers) {
    if (nargs != 4 || !PyBytes_CheckExact(args[0]) || !PyLong_CheckExact(args[1]) || !PyLong_CheckExact(args[2]) ||
        !PyLong_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), max_bytes = PyLong_AsSsize_t(args[2]);
    *max_headers = PyLong_AsSsize_t(args[3]);
    if ((start == -1 || max_bytes == -1 || *max_headers == -1) && PyErr_Occurred())
        return -1;
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    if (start < 0 || start > size) {
        PyErr_SetString(PyExc_ValueError, "start outside data");
        return -1;
    }
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    *p = b + start;
    *e = b + size;
    if (max_bytes >= 0 && *e - *p > max_bytes)
        *e = *p + max_bytes;  /* a head must end within the limit: past it llhttp reads (and refuses) it */
    return 0;
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

PyDoc_STRVAR(request_doc,
"request(data, start, max_bytes, max_headers) -> (method, target, headers, end) | None\n\n"
"The plain request head at data[start:], or None for llhttp to read it (see the source's head comment).");

static PyObject *ph_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const unsigned char *p, *e;
    Py_ssize_t max_headers, length;
    int chunked;
    if (head_args(args, nargs, "request(data: bytes, start: int, max_bytes: int, max_headers: int)", &p, &e,
                  &max_headers) < 0)
        return NULL;
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
    PyObject *headers = fields(&p, e, max_headers, 0, &length, &chunked);
    if (headers == NULL || headers == Py_None)
        return headers;
    PyObject *target = PyBytes_FromStringAndSize((const char *)t, target_len);
    PyObject *end = PyLong_FromSsize_t(p - (const unsigned char *)PyBytes_AS_STRING(args[0]));
    if (target == NULL || end == NULL) {
        Py_XDECREF(target);
        Py_XDECREF(end);
        Py_DECREF(headers);
        return NULL;
    }
    PyObject *out = PyTuple_Pack(4, method_str[m], target, headers, end);
    Py_DECREF(target);
    Py_DECREF(headers);
    Py_DECREF(end);
    return out;
}

PyDoc_STRVAR(response_doc,
"response(data, start, max_bytes, max_headers) -> (status, headers, length, end) | None\n\n"
"The plain response head at data[start:] (length -1: chunked), or None for llhttp to read it (see the source's head "
"comment).");

static PyObject *ph_response(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const unsigned char *p, *e;
    Py_ssize_t max_headers, length;
    int chunked;
    if (head_args(args, nargs, "response(data: bytes, start: int, max_bytes: int, max_headers: int)", &p, &e,
                  &max_headers) < 0)
        return NULL;
    if (e - p < 14 || memcmp(p, "HTTP/1.1 ", 9) != 0 || p[9] < '2' || p[9] > '5' || p[10] < '0' || p[10] > '9' ||
        p[11] < '0' || p[11] > '9' || p[12] != ' ')
        Py_RETURN_NONE;
    int status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    if (status == 204 || status == 304)
        Py_RETURN_NONE;
    p += 13;
    while (p < e && value_ok[*p])
        p++;
    if (e - p < 2 || p[0] != '\r' || p[1] != '\n')
        Py_RETURN_NONE;
    p += 2;
    PyObject *headers = fields(&p, e, max_headers, 1, &length, &chunked);
    if (headers == NULL || headers == Py_None)
        return headers;
    if ((length < 0) == (chunked == 0)) {  /* neither (close-delimited) or both: llhttp decides */
        Py_DECREF(headers);
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(iNnn)", status, headers, chunked ? (Py_ssize_t)-1 : length,
                         (Py_ssize_t)(p - (const unsigned char *)PyBytes_AS_STRING(args[0])));
}

static PyMethodDef methods[] = {
    {"request", (PyCFunction)(void (*)(void))ph_request, METH_FASTCALL, request_doc},
    {"response", (PyCFunction)(void (*)(void))ph_response, METH_FASTCALL, response_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fastgw.proto._plainheadc",
    "Plain HTTP/1.1 heads read in C (see the source's head comment).", -1, methods,
};

PyMODINIT_FUNC PyInit__plainheadc(void) {
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
