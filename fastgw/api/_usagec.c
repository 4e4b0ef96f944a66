/* The usage members of an OpenAI stream, found in C: `drop_null_usage` and `first_empty_choices`; and its events
 * counted (`count_data`: the relay's count, which estimates usage when the upstream reports none).
 *
 * Why C (issue 18): on a streamed request whose client did not ask for usage, the gateway asks the upstream for it
 * (stream_options.include_usage) and gives the client what it would have had without: the usage chunk
 * (`"choices":[]`, before [DONE]) taken out, and on a legacy completion the `"usage":null` member the upstream then
 * writes on every chunk too. The relay's pass-through looks at every read for the usage chunk: a Hyperscan scan
 * through an interpreted call, ~2.7 µs for the mock's 53-event answer read at once and ~1.3 µs for a read of one
 * event (the paced case: once per event); here one memchr pass for '[' (OpenAI writes one a chunk), 0.6 and 0.05 µs.
 * The null members went through `bytes.replace` twice (CPython's search walks this JSON at ~1 byte a nanosecond):
 * ~20 µs for that read, ~3.7 µs with glibc's memmem here. The relay also counts each read's events, its `data:`
 * lines: a memchr for each event's line ends here (0.77 µs for that read where `bytes.count` took 5.7 and a
 * memchr for every 'd', which JSON keys are full of, 2.3).
 *
 * `drop_null_usage(data)` is `data.replace(b',"usage":null', b"").replace(b', "usage": null', b"")`, byte for
 * byte (fastgw/api/sse.py keeps that as the form used when this module is not built; tests/test_usagec.py holds
 * the two equal); `first_empty_choices(data, start)` is the least index >= start where `"choices":[]` or
 * `"choices": []` begins, or -1; `count_data(data)` is `data.startswith(b"data:") + data.count(b"\ndata:") +
 * data.count(b"\rdata:")`: the `data:` lines of whole events (the relay's blocks start at an event), not a `data:`
 * that an event's JSON holds in a string. `event_span(data, i)` is the usage chunk's event around `i` as the relay
 * cut it with `rfind`/`find` of a blank line (0.42 µs the two on the mock's read, the reverse search walking 139
 * bytes back; 0.12 here) and `without(data, start, end)` is `data[:start] + data[end:]` in one copy, not two (0.68
 * µs for the two on the mock's 12 KB read; a `b"".join` of two memoryviews took 0.91).
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static const char NULL_COMPACT[] = ",\"usage\":null";
static const char NULL_SPACED[] = ", \"usage\": null";
static const char EMPTY_COMPACT[] = "\"choices\":[]";
static const char EMPTY_SPACED[] = "\"choices\": []";

/* `data.replace(pat, b"")`: a new reference; `data` itself when `pat` is not in it. */
static PyObject *cut_all(PyObject *data, const char *pat, size_t plen) {
    const char *s = PyBytes_AS_STRING(data);
    size_t n = (size_t)PyBytes_GET_SIZE(data);
    const char *hit = memmem(s, n, pat, plen);
    if (hit == NULL) {
        Py_INCREF(data);
        return data;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (out == NULL)
        return NULL;
    char *d = PyBytes_AS_STRING(out);
    const char *p = s, *end = s + n;
    while (hit != NULL) {
        memcpy(d, p, (size_t)(hit - p));
        d += hit - p;
        p = hit + plen;
        hit = memmem(p, (size_t)(end - p), pat, plen);
    }
    memcpy(d, p, (size_t)(end - p));
    d += end - p;
    if (_PyBytes_Resize(&out, d - PyBytes_AS_STRING(out)) < 0)
        return NULL;
    return out;
}

PyDoc_STRVAR(drop_doc,
"drop_null_usage(data: bytes) -> bytes\n\n"
"data without its `,\"usage\":null` members, then without its `, \"usage\": null` ones (data itself if none).");

static PyObject *uc_drop_null_usage(PyObject *self, PyObject *data) {
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "drop_null_usage: data must be bytes");
        return NULL;
    }
    PyObject *first = cut_all(data, NULL_COMPACT, sizeof NULL_COMPACT - 1);
    if (first == NULL)
        return NULL;
    PyObject *second = cut_all(first, NULL_SPACED, sizeof NULL_SPACED - 1);
    Py_DECREF(first);
    return second;
}

PyDoc_STRVAR(first_doc,
"first_empty_choices(data: bytes, start: int = 0) -> int\n\n"
"Where the first `\"choices\":[]` or `\"choices\": []` of data at or after start begins, or -1.");

static PyObject *uc_first_empty_choices(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "first_empty_choices(data: bytes, start: int = 0)");
        return NULL;
    }
    Py_ssize_t start = 0;
    if (nargs == 2) {
        start = PyLong_AsSsize_t(args[1]);
        if (start == -1 && PyErr_Occurred())
            return NULL;
        if (start < 0) {
            PyErr_SetString(PyExc_ValueError, "first_empty_choices: start must not be negative");
            return NULL;
        }
    }
    const char *s = PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    /* One pass for both forms: each '[' (memchr; one a chunk in OpenAI's, at `"choices":[{`) is looked at, and a
     * `[]` preceded by `"choices":` or `"choices": ` is the answer. The first such '[' gives the least start: the
     * two forms cannot end at the same '[' (one has ':' before it, the other ' '). */
    const Py_ssize_t compact = (Py_ssize_t)sizeof EMPTY_COMPACT - 3, spaced = (Py_ssize_t)sizeof EMPTY_SPACED - 3;
    if (start >= n)
        return PyLong_FromLong(-1);
    Py_ssize_t k = start + compact;
    while (k < n - 1) {
        const char *hit = memchr(s + k, '[', (size_t)(n - 1 - k));
        if (hit == NULL)
            break;
        k = hit - s;
        if (s[k + 1] == ']') {
            if (memcmp(s + k - compact, EMPTY_COMPACT, (size_t)compact) == 0)
                return PyLong_FromSsize_t(k - compact);
            if (k - spaced >= start && memcmp(s + k - spaced, EMPTY_SPACED, (size_t)spaced) == 0)
                return PyLong_FromSsize_t(k - spaced);
        }
        k++;
    }
    return PyLong_FromLong(-1);
}

PyDoc_STRVAR(count_doc,
"count_data(data: bytes) -> int\n\n"
"The lines of whole SSE events that begin with `data:` (at data's start or after a CR or LF).");

/* The `data:` right after each `sep` of s..end. */
static Py_ssize_t count_after(const char *s, const char *end, char sep) {
    Py_ssize_t n = 0;
    const char *p = s;
    while (end - p > 5 && (p = memchr(p, sep, (size_t)(end - p - 5))) != NULL) {
        do  /* the run of line ends (an event's blank line) walked here: one memchr an event, not two */
            p++;
        while (p < end && *p == sep);
        if (end - p >= 5 && memcmp(p, "data:", 5) == 0) {
            n++;
            p += 5;
        }
    }
    return n;
}

static PyObject *uc_count_data(PyObject *self, PyObject *data) {
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "count_data: data must be bytes");
        return NULL;
    }
    const char *s = PyBytes_AS_STRING(data), *end = s + PyBytes_GET_SIZE(data);
    /* A line end is rarer than any letter of `data:` (two an event; JSON keys hold 'd' and ':' many times), and a
     * `\r\n` line's `data:` is found once, after its LF. */
    Py_ssize_t n = (end - s >= 5 && memcmp(s, "data:", 5) == 0) + count_after(s, end, '\n')
        + count_after(s, end, '\r');
    return PyLong_FromSsize_t(n);
}

PyDoc_STRVAR(span_doc,
"event_span(data: bytes, i: int) -> tuple[int, int]\n\n"
"The event around index i: from after the last blank line (\\n\\n) that ends before i (or 0) to after the first\n"
"that begins at or after i (or the end).");

static PyObject *uc_event_span(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "event_span(data: bytes, i: int)");
        return NULL;
    }
    const char *s = PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t i = PyLong_AsSsize_t(args[1]);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    if (i < 0 || i > n) {
        PyErr_SetString(PyExc_ValueError, "event_span: no such index");
        return NULL;
    }
    /* `data.rfind(b"\n\n", 0, i)`: a blank line wholly before i, the last one (memrchr a line end at a time). */
    Py_ssize_t start = 0;
    for (Py_ssize_t k = i - 1; k >= 1;) {
        const char *lf = memrchr(s + 1, '\n', (size_t)k);  /* a '\n' at s[1..k], with a '\n' before it? */
        if (lf == NULL)
            break;
        if (lf[-1] == '\n') {
            start = lf - s + 1;
            break;
        }
        k = lf - s - 2;  /* lf[-1] is no '\n': the next pair ends before it */
    }
    /* `data.find(b"\n\n", i)`. */
    Py_ssize_t end = n;
    for (const char *p = s + i; p < s + n - 1;) {
        const char *lf = memchr(p, '\n', (size_t)(s + n - 1 - p));
        if (lf == NULL)
            break;
        if (lf[1] == '\n') {
            end = lf - s + 2;
            break;
        }
        p = lf + 1;
    }
    return Py_BuildValue("(nn)", start, end);
}

PyDoc_STRVAR(without_doc,
"without(data: bytes, start: int, end: int) -> bytes\n\n"
"data[:start] + data[end:] in one copy (0 <= start <= end <= len(data)).");

static PyObject *uc_without(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyLong_Check(args[1]) || !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "without(data: bytes, start: int, end: int)");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), end = PyLong_AsSsize_t(args[2]);
    if ((start == -1 || end == -1) && PyErr_Occurred())
        return NULL;
    if (start < 0 || start > end || end > n) {
        PyErr_SetString(PyExc_ValueError, "without: no such span");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, n - (end - start));
    if (out == NULL)
        return NULL;
    const char *s = PyBytes_AS_STRING(args[0]);
    char *d = PyBytes_AS_STRING(out);
    memcpy(d, s, (size_t)start);
    memcpy(d + start, s + end, (size_t)(n - end));
    return out;
}

static PyMethodDef methods[] = {
    {"drop_null_usage", uc_drop_null_usage, METH_O, drop_doc},
    {"event_span", (PyCFunction)(void (*)(void))uc_event_span, METH_FASTCALL, span_doc},
    {"without", (PyCFunction)(void (*)(void))uc_without, METH_FASTCALL, without_doc},
    {"count_data", uc_count_data, METH_O, count_doc},
    {"first_empty_choices", (PyCFunction)(void (*)(void))uc_first_empty_choices, METH_FASTCALL, first_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fastgw.api._usagec",
    "The usage members of an OpenAI stream, found in C (see the source's head comment).", -1, methods,
};

PyMODINIT_FUNC PyInit__usagec(void) {
    return PyModule_Create(&module);
}
