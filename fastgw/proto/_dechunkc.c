/* A chunked response body's plain chunks decoded in C: `dechunk`, fastgw/proto/dechunk.py's function of that name.
 *
 * Why C (issue 18): a provider frames each SSE event as its own chunk and a fast upstream sends dozens in one
 * read; through httptools each chunk costs three llhttp callbacks into Cython, a bytes object and a list append,
 * and the read's pieces are joined afterwards (~45,000 instructions of a 53-event answer's ~270,000). Here one
 * pass reads the size lines and copies the chunks' data into one bytes object, allocated once for the read.
 *
 * `dechunk(data, start, state, out)` appends to `out` and returns what the Python form does (tests/proto/
 * test_dechunk.py holds the two equal; tests/proto/test_client_chunks.py, a connection's reading equal to llhttp's):
 * only plain chunks (1 to 8 hex digits, CR LF, a nonzero size of data, CR LF) are read; at a boundary where anything
 * else begins, code 2 hands the rest to llhttp. Codes (the returned int's low 3 bits): 0 all read (above them, the
 * state: left << 2 | crlf), else, above them the offset: 1 an incomplete size line there, 2 llhttp's from there,
 * 3 LF without CR after chunk data, 4 neither. `head_cut(data, start)` is dechunk.py's too: where a head ends, if
 * it names a chunked body (two bytes.find calls with bounds cost ~3,000 instructions a response in compiled code).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

enum { DONE = 0, MORE = 1, LLHTTP = 2, NO_CR = 3, NO_LF = 4 };
#define MAX_DIGITS 8

/* A hex digit's value, or -1. */
static signed char hexval[256];

/* Append the read's allocation, cut to what was written (`end`), to `out`, unless nothing was. */
static int emit(PyObject *body, char *end, PyObject *out) {
    Py_ssize_t size = end - PyBytes_AS_STRING(body);
    if (size == 0) {
        Py_DECREF(body);
        return 0;
    }
    if (size < PyBytes_GET_SIZE(body) && _PyBytes_Resize(&body, size) < 0)
        return -1;
    int r = PyList_Append(out, body);
    Py_DECREF(body);
    return r;
}

PyDoc_STRVAR(dechunk_doc,
"dechunk(data, start, state, out) -> int\n\n"
"The data of the plain chunks of `data[start:]` from `state`, appended to `out`; fastgw/proto/dechunk.py's dechunk.");

static PyObject *dc_dechunk(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyBytes_CheckExact(args[0]) || !PyLong_CheckExact(args[1]) || !PyLong_CheckExact(args[2]) ||
        !PyList_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "dechunk(data: bytes, start: int, state: int, out: list)");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t i = PyLong_AsSsize_t(args[1]);
    long long state = PyLong_AsLongLong(args[2]);
    if ((i == -1 || state == -1) && PyErr_Occurred())
        return NULL;
    Py_ssize_t left = (Py_ssize_t)(state >> 2);
    int crlf = (int)(state & 3);
    if (i < 0 || i > n || state < 0 || state >> 2 > (long long)0xffffffff || crlf == 3 || (left > 0 && crlf != 0)) {
        PyErr_SetString(PyExc_ValueError, "dechunk: no such start or state");
        return NULL;
    }
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    /* The body is never longer than what is read. */
    PyObject *body = PyBytes_FromStringAndSize(NULL, n - i);
    if (body == NULL)
        return NULL;
    char *out = PyBytes_AS_STRING(body);
    int code = DONE;
    while (i < n) {
        if (left) {
            Py_ssize_t take = left < n - i ? left : n - i;
            memcpy(out, s + i, (size_t)take);
            out += take;
            i += take;
            left -= take;
            if (!left)
                crlf = 2;
            continue;
        }
        if (crlf) {
            unsigned char c = s[i];
            if (crlf == 2 && c == '\r') {
                crlf = 1;
                i++;
                continue;
            }
            if (crlf == 1 && c == '\n') {
                crlf = 0;
                i++;
                continue;
            }
            code = crlf == 2 && c == '\n' ? NO_CR : NO_LF;
            break;
        }
        Py_ssize_t j = i;
        Py_ssize_t size = 0;
        while (j < n && j - i < MAX_DIGITS) {
            int d = hexval[s[j]];
            if (d < 0)
                break;
            size = size * 16 + d;
            j++;
        }
        if (j == n || (j + 1 == n && s[j] == '\r' && size)) {
            code = MORE; /* digits only so far, or digits and CR */
            break;
        }
        if (j == i || s[j] != '\r' || size == 0 || s[j + 1] != '\n') {
            code = LLHTTP;
            break;
        }
        left = size;
        i = j + 2;
    }
    if (emit(body, out, args[3]) < 0)
        return NULL;
    if (code == DONE)
        return PyLong_FromLongLong(DONE | ((long long)left << 2 | crlf) << 3);
    return PyLong_FromLongLong(code | (long long)i << 3);
}

/* The offset after the first CR LF CR LF in s[start:n], or -1. A line end at a time (memchr), as a head is a few
 * lines: glibc's memmem scanned the whole read, the body too, at ~1.3 instructions a byte. */
static Py_ssize_t head_end(const char *s, Py_ssize_t start, Py_ssize_t n) {
    const char *p = s + start, *stop = s + n;
    while (p < stop) {
        const char *lf = memchr(p, '\n', (size_t)(stop - p));
        if (lf == NULL || stop - lf < 3)
            return -1;
        if (lf[1] == '\r' && lf[2] == '\n' && lf > s + start && lf[-1] == '\r')
            return lf - s + 3;
        p = lf + 1;
    }
    return -1;
}

/* Whether the head holds "hunked" ("chunked", "Chunked"). */
static int names_chunked(const char *h, Py_ssize_t size) {
    const char *p = h, *stop = h + size;
    while (stop - p >= 6) {
        const char *c = memchr(p, 'h', (size_t)(stop - p - 5));
        if (c == NULL)
            return 0;
        if (memcmp(c + 1, "unked", 5) == 0)
            return 1;
        p = c + 1;
    }
    return 0;
}

PyDoc_STRVAR(head_cut_doc,
"head_cut(data, start) -> int\n\n"
"Where the head that begins at `start` ends (after its CR LF CR LF), if it names a chunked body; else -1.");

static PyObject *dc_head_cut(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_CheckExact(args[0]) || !PyLong_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "head_cut(data: bytes, start: int)");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    if (start < 0 || start > n) {
        PyErr_SetString(PyExc_ValueError, "head_cut: no such start");
        return NULL;
    }
    const char *s = PyBytes_AS_STRING(args[0]);
    Py_ssize_t end = head_end(s, start, n);
    if (end < 0 || !names_chunked(s + start, end - start))
        return PyLong_FromLong(-1);
    return PyLong_FromSsize_t(end);
}

static PyMethodDef methods[] = {
    {"dechunk", (PyCFunction)(void (*)(void))dc_dechunk, METH_FASTCALL, dechunk_doc},
    {"head_cut", (PyCFunction)(void (*)(void))dc_head_cut, METH_FASTCALL, head_cut_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fastgw.proto._dechunkc",
    "A chunked body's plain chunks decoded in C (see the source's head comment).", -1, methods,
};

PyMODINIT_FUNC PyInit__dechunkc(void) {
    memset(hexval, -1, sizeof hexval);
    for (int c = '0'; c <= '9'; c++)
        hexval[c] = (signed char)(c - '0');
    for (int c = 'a'; c <= 'f'; c++)
        hexval[c] = (signed char)(c - 'a' + 10);
    for (int c = 'A'; c <= 'F'; c++)
        hexval[c] = (signed char)(c - 'A' + 10);
    return PyModule_Create(&module);
}
