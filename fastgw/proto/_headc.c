/* A response head written in C: `head`, the body of fastgw/proto/writer.py's `build_head`.
 *
 * Why C (issue 18): every response has a head: the status line, the Date, the headers checked for CR, LF and NUL
 * (no header injection) and the framing and connection lines. In compiled Python that is a list of parts grown per
 * header, a membership test per byte class per name and value, and a join: ~7,200 instructions of a non-streamed
 * request's ~146,000 (a head of six headers). Here one pass measures and checks the headers, one allocation takes
 * the head, a memcpy per part fills it, and the Date is formatted once a second from the C clock.
 *
 * `head(status, reason, headers, extra, framing, keep_alive)` is writer.py's `build_head_py` byte for byte
 * (tests/proto/test_headc.py holds the two equal): `HTTP/1.1 {status} {reason}`, `date`, `server: fastgw`, each
 * (name, value) of `headers` then of `extra`, `framing` as it is, then `connection: keep-alive` or `close`. A name
 * or value holding CR, LF or NUL raises ValueError("invalid header {name!r}"), as the Python form does. It returns
 * None, and the Python form writes the head, for anything but a list of (bytes, bytes) tuples (the Python form
 * takes any pairs) or a status outside 100..999.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <time.h>

/* 1 for the bytes a header may not hold: CR, LF, NUL (aiohttp's rule, as writer.py's `_valid_header_value`). */
static unsigned char forbidden[256];

static const char DAYS[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char MONTHS[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* The Date line's value, `email.utils.formatdate(t, usegmt=True)` (RFC 9110 §5.6.7 IMF-fixdate), for one second. */
static time_t date_second = -1;
static char date_value[32];
static Py_ssize_t date_len;

static void two(char *d, int v) {
    d[0] = (char)('0' + v / 10);
    d[1] = (char)('0' + v % 10);
}

static void refresh_date(time_t now) {
    struct tm tm;
    if (gmtime_r(&now, &tm) == NULL || tm.tm_year + 1900 > 9999 || tm.tm_year + 1900 < 0) {
        date_len = 0;  /* past what the format can say: no value (the Python form would write a wider year) */
        return;
    }
    char *d = date_value;
    memcpy(d, DAYS[tm.tm_wday], 3);
    d[3] = ',';
    d[4] = ' ';
    two(d + 5, tm.tm_mday);
    d[7] = ' ';
    memcpy(d + 8, MONTHS[tm.tm_mon], 3);
    d[11] = ' ';
    int y = tm.tm_year + 1900;
    two(d + 12, y / 100);
    two(d + 14, y % 100);
    d[16] = ' ';
    two(d + 17, tm.tm_hour);
    d[19] = ':';
    two(d + 20, tm.tm_min);
    d[22] = ':';
    two(d + 23, tm.tm_sec);
    memcpy(d + 25, " GMT", 4);
    date_len = 29;
    date_second = now;
}

/* 1 when `v` has none of CR, LF, NUL. */
static int clean(const unsigned char *v, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (forbidden[v[i]])
            return 0;
    return 1;
}

/* The bytes the (name, value) pairs of `list` add to a head (`name: value\r\n` each); -1 with ValueError set for a
 * forbidden byte, -2 (no error set) for anything the C form does not take. */
static Py_ssize_t measure(PyObject *list) {
    Py_ssize_t total = 0, n = PyList_GET_SIZE(list);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2)
            return -2;
        PyObject *name = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1);
        if (!PyBytes_CheckExact(name) || !PyBytes_CheckExact(value))
            return -2;
        Py_ssize_t nl = PyBytes_GET_SIZE(name), vl = PyBytes_GET_SIZE(value);
        /* The Python form checks the value first; the error names the header either way. */
        if (!clean((const unsigned char *)PyBytes_AS_STRING(value), vl)
                || !clean((const unsigned char *)PyBytes_AS_STRING(name), nl)) {
            PyErr_Format(PyExc_ValueError, "invalid header %R", name);
            return -1;
        }
        total += nl + vl + 4;
    }
    return total;
}

static char *put(char *d, const char *s, Py_ssize_t n) {
    memcpy(d, s, (size_t)n);
    return d + n;
}

static char *put_pairs(char *d, PyObject *list) {
    Py_ssize_t n = PyList_GET_SIZE(list);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        PyObject *name = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1);
        d = put(d, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name));
        *d++ = ':';
        *d++ = ' ';
        d = put(d, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
        *d++ = '\r';
        *d++ = '\n';
    }
    return d;
}

static const char SERVER[] = "\r\nserver: fastgw\r\n";
static const char KEEP[] = "connection: keep-alive\r\n\r\n";
static const char CLOSE[] = "connection: close\r\n\r\n";

PyDoc_STRVAR(head_doc,
"head(status: int, reason: bytes, headers: list, extra: list, framing: bytes, keep_alive: bool) -> bytes | None\n\n"
"writer.build_head_py's head, or None for what only the Python form takes (see the source's head comment).");

static PyObject *hc_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyLong_Check(args[0]) || !PyBytes_Check(args[1]) || !PyBytes_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "head(status: int, reason: bytes, headers: list, extra: list, framing: bytes, keep_alive)");
        return NULL;
    }
    PyObject *headers = args[2], *extra = args[3], *reason = args[1], *framing = args[4];
    int keep = PyObject_IsTrue(args[5]);
    if (keep < 0)
        return NULL;
    long status = PyLong_AsLong(args[0]);
    if (status == -1 && PyErr_Occurred())
        PyErr_Clear();  /* out of a long's range: the Python form formats it */
    if (status < 100 || status > 999 || !PyList_CheckExact(headers) || !PyList_CheckExact(extra))
        Py_RETURN_NONE;
    time_t now = time(NULL);
    if (now != date_second)
        refresh_date(now);
    if (date_len == 0)
        Py_RETURN_NONE;
    Py_ssize_t h = measure(headers);
    if (h == -1)
        return NULL;
    Py_ssize_t x = h < 0 ? h : measure(extra);
    if (x == -1)
        return NULL;
    if (h == -2 || x == -2)
        Py_RETURN_NONE;
    Py_ssize_t rl = PyBytes_GET_SIZE(reason), fl = PyBytes_GET_SIZE(framing);
    Py_ssize_t cl = keep ? (Py_ssize_t)sizeof KEEP - 1 : (Py_ssize_t)sizeof CLOSE - 1;
    /* "HTTP/1.1 NNN " reason "\r\ndate: " */
    Py_ssize_t size = 13 + rl + 8 + date_len + (Py_ssize_t)sizeof SERVER - 1 + h + x + fl + cl;
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL)
        return NULL;
    char *d = PyBytes_AS_STRING(out);
    d = put(d, "HTTP/1.1 ", 9);
    *d++ = (char)('0' + status / 100);
    *d++ = (char)('0' + status / 10 % 10);
    *d++ = (char)('0' + status % 10);
    *d++ = ' ';
    d = put(d, PyBytes_AS_STRING(reason), rl);
    d = put(d, "\r\ndate: ", 8);
    d = put(d, date_value, date_len);
    d = put(d, SERVER, (Py_ssize_t)sizeof SERVER - 1);
    d = put_pairs(d, headers);
    d = put_pairs(d, extra);
    d = put(d, PyBytes_AS_STRING(framing), fl);
    put(d, keep ? KEEP : CLOSE, cl);
    return out;
}

static PyMethodDef methods[] = {
    {"head", (PyCFunction)(void (*)(void))hc_head, METH_FASTCALL, head_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fastgw.proto._headc",
    "A response head written in C (see the source's head comment).", -1, methods,
};

PyMODINIT_FUNC PyInit__headc(void) {
    forbidden['\r'] = forbidden['\n'] = forbidden[0] = 1;
    return PyModule_Create(&module);
}
