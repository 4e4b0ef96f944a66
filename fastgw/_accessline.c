/* The access log's common line in C: one call takes a request's values and returns its JSON line, or None when the
 * line needs what only fastgw.accesslog's general path does (redaction, capping, escaping).
 *
 * Why C (issue 18): every request writes a line, and the log's cost was 15 % of a non-streamed pass-through's
 * instructions with the line built as a msgspec Struct in compiled Python (~11,000 instructions to gather the values
 * into the Struct, ~4,500 to encode it, bench/RESULTS.md "2026-12-06 16:40"). A line of a request whose strings the
 * config defines is a fixed template around a few numbers and plain ASCII strings: here that is a memcpy per field
 * and integer formatting, with no Python object made but the line itself. msgspec and orjson stay the encoders of
 * everything else; this writes nothing they would write differently.
 *
 * The line is, character for character, `_json(_record(values))` of accesslog.py (tests/test_accesslog_fast.py holds
 * the two equal over a hostile corpus). The general path is taken (None) when:
 *   - the route or model is not one of the config's names that JSON writes as they are (`known`, each with its
 *     JSON form), or the route has a query string: the general path redacts and cuts them;
 *   - any string is not plain printable ASCII (a control, quote, backslash, DEL or non-ASCII character: JSON
 *     escapes, and the general path also escapes U+2028/U+2029/U+0085/DEL), or is not an exact str;
 *   - the request id is longer than 128 characters, or the client longer than 45 (an X-Forwarded-For value);
 *   - a number is out of the range in which this formatting is exact (below);
 *   - the line would not fit LINE_CAP bytes.
 *
 * Milliseconds are written as Python writes `int(µs) / 1000`: for |µs| < 10^15 distinct multiples of 0.001 are
 * distinct doubles more than half a unit in the last place apart, so the shortest repr of n / 1000 (Python's, and
 * orjson's) is the decimal n / 1000 with its trailing zeros dropped, one fractional digit kept.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define LINE_CAP 4096
#define RID_MAX 128     /* accesslog.py caps a longer request id (the app accepts ids of at most this) */
#define CLIENT_MAX 45   /* longer than any IP address: an X-Forwarded-For value, which the general path caps */
#define MS_LIMIT 1e15   /* microseconds (31 years) within which the millisecond formatting is exact */
#define WALL_LIMIT 253402300800.0 /* 10000-01-01: a four-digit year */

typedef struct {
    char *p;
    char *end;
} Out;

static PyObject *s_prompt_tokens, *s_input_tokens, *s_completion_tokens, *s_output_tokens, *s_estimated,
    *s_partial;

/* Inlined: most calls copy a literal of known length, which then compiles to a few moves. */
static inline __attribute__((always_inline)) int put(Out *o, const char *s, size_t n) {
    if ((size_t)(o->end - o->p) < n)
        return -1;
    memcpy(o->p, s, n);
    o->p += n;
    return 0;
}

#define PUT(o, lit) put(o, lit, sizeof(lit) - 1)

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
/* Whether a word of ASCII bytes holds one JSON escapes or the log escapes: below 0x20, '"', '\\' or DEL (each test
 * exact for bytes below 0x80: a byte's borrow never reaches its neighbour's high bit unless that one is flagged). */
static inline uint64_t needs_escape(uint64_t x) {
    uint64_t q = x ^ (ONES * '"'), b = x ^ (ONES * '\\'), del = x ^ (ONES * 0x7f);
    return ((x - ONES * 0x20) | (q - ONES) | (b - ONES) | (del - ONES)) & ~x & HIGHS;
}

/* An exact str that JSON writes as is (printable ASCII but quote and backslash), quoted; -1 otherwise. Copied, then
 * checked eight bytes at a time. */
static int put_str(Out *o, PyObject *v, Py_ssize_t max) {
    if (!PyUnicode_CheckExact(v) || !PyUnicode_IS_COMPACT_ASCII(v))
        return -1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(v);
    if (n > max || o->end - o->p < n + 2)
        return -1;
    const unsigned char *s = PyUnicode_DATA(v);
    char *d = o->p;
    d[0] = '"';
    memcpy(d + 1, s, (size_t)n);
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, s + i, 8);
        if (needs_escape(x))
            return -1;
    }
    for (; i < n; i++) {
        unsigned char c = s[i];
        if (c < 0x20 || c == '"' || c == '\\' || c == 0x7f)
            return -1;
    }
    d[n + 1] = '"';
    o->p = d + n + 2;
    return 0;
}

static int put_str_or_null(Out *o, PyObject *v) {
    return v == Py_None ? PUT(o, "null") : put_str(o, v, PY_SSIZE_T_MAX);
}

static int put_ll(Out *o, long long v) {
    char tmp[24];
    char *e = tmp + sizeof tmp, *b = e;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        *--b = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--b = '-';
    return put(o, b, (size_t)(e - b));
}

/* An exact int that fits 64 bits (orjson's range, signed half) in *n; -1 otherwise (errors cleared). */
static int as_ll(PyObject *v, long long *n) {
    if (!PyLong_CheckExact(v))
        return -1;
    int overflow;
    *n = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (*n == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return -1;
    }
    return 0;
}

static int put_int(Out *o, PyObject *v) {
    long long n;
    return as_ll(v, &n) < 0 ? -1 : put_ll(o, n);
}

/* `status or 500` of an exact int. */
static int put_status(Out *o, PyObject *v) {
    long long n;
    return as_ll(v, &n) < 0 ? -1 : n == 0 ? PUT(o, "500") : put_ll(o, n);
}

/* `int((b - a) * 1e6) / 1000` as Python writes it (see the head comment). */
static int put_ms(Out *o, double a, double b) {
    double us = (b - a) * 1e6;
    if (!(fabs(us) < MS_LIMIT))
        return -1;
    long long n = (long long)us; /* truncation toward zero, as int() */
    if (n < 0 && PUT(o, "-") < 0)
        return -1;
    unsigned long long u = n < 0 ? 0ULL - (unsigned long long)n : (unsigned long long)n;
    if (put_ll(o, (long long)(u / 1000)) < 0)
        return -1;
    unsigned r = (unsigned)(u % 1000);
    char frac[4] = {'.', (char)('0' + r / 100), (char)('0' + r / 10 % 10), (char)('0' + r % 10)};
    size_t len = 4;
    while (len > 2 && frac[len - 1] == '0')
        len--;
    return put(o, frac, len);
}

static int as_double(PyObject *v, double *out) {
    if (!PyFloat_CheckExact(v))
        return -1;
    *out = PyFloat_AS_DOUBLE(v);
    return 0;
}

/* `_ts(wall)`: UTC ISO 8601 with milliseconds; the date and time formatted once per second. */
static long long ts_second = -1;
static char ts_prefix[32];
static size_t ts_len;

static int put_ts(Out *o, double wall) {
    if (!(wall >= 0 && wall < WALL_LIMIT))
        return -1;
    long long sec = (long long)wall;
    if (sec != ts_second) {
        time_t t = (time_t)sec;
        struct tm tm;
        if (gmtime_r(&t, &tm) == NULL)
            return -1;
        /* As time.strftime does it (the same C call, the year four digits within WALL_LIMIT). */
        ts_len = strftime(ts_prefix, sizeof ts_prefix, "%Y-%m-%dT%H:%M:%S", &tm);
        if (ts_len == 0)
            return -1;
        ts_second = sec;
    }
    int ms = (int)((wall - (double)sec) * 1000);
    if (ms < 0 || ms > 999)
        return -1;
    char tail[6] = {'.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10), 'Z', '"'};
    if (PUT(o, "\"") < 0 || put(o, ts_prefix, ts_len) < 0)
        return -1;
    return put(o, tail, sizeof tail);
}

/* Whether a usage value's truth can be read without running code (the types a decoded JSON body holds). */
static int plain_truth(PyObject *v) {
    return v == Py_None || PyBool_Check(v) || PyLong_CheckExact(v) || PyFloat_CheckExact(v) ||
           PyUnicode_CheckExact(v) || PyDict_CheckExact(v) || PyList_CheckExact(v);
}

/* Which of the six keys `_tokens` reads `k` is (0..5), or -1: an interned key by identity, else by its characters. A
 * key that is not an exact str is 6: the general path takes the line (its equality could run code). */
static int usage_key(PyObject *k) {
    PyObject *const names[] = {s_prompt_tokens, s_input_tokens, s_completion_tokens, s_output_tokens, s_estimated,
                               s_partial};
    for (int i = 0; i < 6; i++)
        if (k == names[i])
            return i;
    if (!PyUnicode_CheckExact(k))
        return 6;
    if (!PyUnicode_IS_COMPACT_ASCII(k))
        return -1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(k);
    const char *s = (const char *)PyUnicode_DATA(k);
    for (int i = 0; i < 6; i++)
        if (PyUnicode_GET_LENGTH(names[i]) == n && memcmp(PyUnicode_DATA(names[i]), s, (size_t)n) == 0)
            return i;
    return -1;
}

/* `_tokens(usage)`: null, or {"prompt", "completion", "estimated"[, "partial"]}; the dict read in one pass (where a
 * lookup of each key, found or not, hashed and probed six times). */
static int put_tokens(Out *o, PyObject *usage) {
    if (usage == Py_None)
        return PUT(o, "null");
    if (!PyDict_CheckExact(usage))
        return -1;
    if (PyDict_GET_SIZE(usage) == 0)
        return PUT(o, "null");
    PyObject *found[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(usage, &pos, &k, &v)) {
        int i = usage_key(k);
        if (i == 6)
            return -1;
        if (i >= 0)
            found[i] = v;
    }
    /* `usage.get(key, usage.get(alt))`: the first key's value when it is there, None included. */
    PyObject *p = found[0] != NULL ? found[0] : found[1];
    PyObject *c = found[2] != NULL ? found[2] : found[3];
    PyObject *est = found[4], *part = found[5];
    /* Truth tests last, and only of types whose truth runs no code: the borrowed values stay valid. */
    if ((est != NULL && !plain_truth(est)) || (part != NULL && !plain_truth(part)))
        return -1;
    int e = est == NULL ? 0 : PyObject_IsTrue(est), pt = part == NULL ? 0 : PyObject_IsTrue(part);
    if (e < 0 || pt < 0) {
        PyErr_Clear();
        return -1;
    }
    if (PUT(o, "{\"prompt\":") < 0 || (p != NULL && PyLong_CheckExact(p) ? put_int(o, p) : PUT(o, "null")) < 0)
        return -1;
    if (PUT(o, ",\"completion\":") < 0 || (c != NULL && PyLong_CheckExact(c) ? put_int(o, c) : PUT(o, "null")) < 0)
        return -1;
    if ((e ? PUT(o, ",\"estimated\":true") : PUT(o, ",\"estimated\":false")) < 0)
        return -1;
    if (pt && PUT(o, ",\"partial\":true") < 0)
        return -1;
    return PUT(o, "}");
}

/* `policy or {}`: each policy's outcome, both plain strings. */
static int put_policy(Out *o, PyObject *policy) {
    if (policy == Py_None)
        return PUT(o, "{}");
    if (!PyDict_CheckExact(policy))
        return -1;
    if (PUT(o, "{") < 0)
        return -1;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    int first = 1;
    while (PyDict_Next(policy, &pos, &k, &v)) {
        if ((!first && PUT(o, ",") < 0) || put_str(o, k, PY_SSIZE_T_MAX) < 0 || PUT(o, ":") < 0 ||
            put_str(o, v, PY_SSIZE_T_MAX) < 0)
            return -1;
        first = 0;
    }
    return PUT(o, "}");
}

/* The last route written, with the `known` dict it was found in and its JSON form (strong references, so neither
 * address can be another object's): a request's path is one str object per target (proto.h1's table), so the
 * common line finds its route by identity. `known` is replaced, never changed in place (accesslog.set_redactor). */
static PyObject *last_known, *last_route, *last_route_json;

/* A name the config defines, as the line may write it without redaction (a route without a query string): its JSON
 * form, looked up in `known`. */
static int put_known(Out *o, PyObject *known, PyObject *v, int route) {
    if (route && v == last_route && known == last_known)
        return put(o, PyBytes_AS_STRING(last_route_json), (size_t)PyBytes_GET_SIZE(last_route_json));
    if (!PyUnicode_CheckExact(v))
        return -1;
    PyObject *json = PyDict_GetItemWithError(known, v);
    if (json == NULL || !PyBytes_CheckExact(json)) {
        PyErr_Clear();
        return -1;
    }
    const char *s = PyBytes_AS_STRING(json);
    size_t n = (size_t)PyBytes_GET_SIZE(json);
    if (route) {
        if (memchr(s, '?', n) != NULL)
            return -1;
        Py_INCREF(known);
        Py_INCREF(v);
        Py_INCREF(json);
        Py_XSETREF(last_known, known);
        Py_XSETREF(last_route, v);
        Py_XSETREF(last_route_json, json);
    }
    return put(o, s, n);
}

PyDoc_STRVAR(line_doc,
"line(known, principal, client, method, route, model, target, stream, request_id, status, first_byte, started,\n"
"     end, wall, nbytes, usage, policy, retries, error) -> bytes | None\n\n"
"The JSON access line (newline-terminated) of these values, or None when it must take the general path.\n"
"`known`: the names the config defines that JSON writes as they are, each with its JSON form (bytes);\n"
"`end` and `wall` None: the clocks now.");

enum { A_KNOWN, A_PRINCIPAL, A_CLIENT, A_METHOD, A_ROUTE, A_MODEL, A_TARGET, A_STREAM, A_RID, A_STATUS, A_FB,
       A_STARTED, A_END, A_WALL, A_NBYTES, A_USAGE, A_POLICY, A_RETRIES, A_ERROR, N_ARGS };

static PyObject *al_line(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != N_ARGS) {
        PyErr_Format(PyExc_TypeError, "line() takes %d arguments (%zd given)", N_ARGS, nargs);
        return NULL;
    }
    PyObject *known = args[A_KNOWN];
    if (!PyDict_CheckExact(known)) {
        PyErr_SetString(PyExc_TypeError, "line(): known must be a dict");
        return NULL;
    }
    double started, fb = 0, end, wall;
    if (as_double(args[A_STARTED], &started) < 0)
        Py_RETURN_NONE;
    if (args[A_FB] != Py_None && as_double(args[A_FB], &fb) < 0)
        Py_RETURN_NONE;
    /* The clocks as time.monotonic() and time.time() read them. */
    struct timespec now;
    if (args[A_END] == Py_None) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        end = (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
    } else if (as_double(args[A_END], &end) < 0) {
        Py_RETURN_NONE;
    }
    if (args[A_WALL] == Py_None) {
        clock_gettime(CLOCK_REALTIME, &now);
        wall = (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
    } else if (as_double(args[A_WALL], &wall) < 0) {
        Py_RETURN_NONE;
    }
    char buf[LINE_CAP];
    Out o = {buf, buf + sizeof buf};
    Out *w = &o;
    PyObject *client = args[A_CLIENT], *stream = args[A_STREAM];
    int ok =
        PUT(w, "{\"ts\":") == 0 && put_ts(w, wall) == 0 &&
        PUT(w, ",\"request_id\":") == 0 && put_str(w, args[A_RID], RID_MAX) == 0 &&
        PUT(w, ",\"principal\":") == 0 && put_str_or_null(w, args[A_PRINCIPAL]) == 0 &&
        PUT(w, ",\"client\":") == 0 &&
        /* `client or None` */
        (client == Py_None || (PyUnicode_CheckExact(client) && PyUnicode_GET_LENGTH(client) == 0)
             ? PUT(w, "null") : put_str(w, client, CLIENT_MAX)) == 0 &&
        PUT(w, ",\"method\":") == 0 && put_str(w, args[A_METHOD], PY_SSIZE_T_MAX) == 0 &&
        PUT(w, ",\"route\":") == 0 && put_known(w, known, args[A_ROUTE], 1) == 0 &&
        PUT(w, ",\"model\":") == 0 &&
        (args[A_MODEL] == Py_None ? PUT(w, "null") : put_known(w, known, args[A_MODEL], 0)) == 0 &&
        PUT(w, ",\"target\":") == 0 && put_str_or_null(w, args[A_TARGET]) == 0 &&
        (stream == Py_True ? PUT(w, ",\"stream\":true") : stream == Py_False ? PUT(w, ",\"stream\":false") : -1) == 0 &&
        PUT(w, ",\"status\":") == 0 &&
        put_status(w, args[A_STATUS]) == 0 &&
        PUT(w, ",\"ttft_ms\":") == 0 && (args[A_FB] == Py_None ? PUT(w, "null") : put_ms(w, started, fb)) == 0 &&
        PUT(w, ",\"duration_ms\":") == 0 && put_ms(w, started, end) == 0 &&
        PUT(w, ",\"bytes\":") == 0 && (args[A_NBYTES] == Py_None ? PUT(w, "null") : put_int(w, args[A_NBYTES])) == 0 &&
        PUT(w, ",\"tokens\":") == 0 && put_tokens(w, args[A_USAGE]) == 0 &&
        PUT(w, ",\"policy\":") == 0 && put_policy(w, args[A_POLICY]) == 0 &&
        PUT(w, ",\"retries\":") == 0 && put_int(w, args[A_RETRIES]) == 0 &&
        PUT(w, ",\"error\":") == 0 && put_str_or_null(w, args[A_ERROR]) == 0 &&
        PUT(w, "}\n") == 0;
    if (!ok)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(buf, o.p - buf);
}

static PyMethodDef methods[] = {
    {"line", (PyCFunction)(void (*)(void))al_line, METH_FASTCALL, line_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fastgw._accessline",
    "The access log's common line in C (see the source's head comment).", -1, methods,
};

PyMODINIT_FUNC PyInit__accessline(void) {
    struct {
        PyObject **slot;
        const char *name;
    } keys[] = {{&s_prompt_tokens, "prompt_tokens"}, {&s_input_tokens, "input_tokens"},
                {&s_completion_tokens, "completion_tokens"}, {&s_output_tokens, "output_tokens"},
                {&s_estimated, "estimated"}, {&s_partial, "partial"}};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (*keys[i].slot == NULL && (*keys[i].slot = PyUnicode_InternFromString(keys[i].name)) == NULL)
            return NULL;
    return PyModule_Create(&module);
}
