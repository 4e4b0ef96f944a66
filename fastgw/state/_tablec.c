/* The record operations of fastgw.state.table in C: find, pack, commit, a key's hash, and the lock's common case.
 *
 * Why C and not the compiled Python of table.py (issue 18): an admission and a settlement of the rate-limiter lock
 * the table twice, find nine records, write eight and commit twice. In Python each of these is struct packing and
 * unpacking, slices of the mapping and a tuple of nine objects per probe (~4,100 instructions a find, ~18,700 a
 * commit, ~2,400 a put, measured with bench/ir_ab.sh -l): most of the limiter's cost. Here they are a memcmp, a
 * memcpy and the one tuple a found record needs (the limiter's own instructions fell by 45 %, the 2026-12-06 16:40
 * section of bench/RESULTS.md). table.py keeps the same operations in Python and uses them whenever this module is
 * not built (a checkout without `make`); tests run both, and both read and write one format, so either may find the
 * other's redo record after a crash.
 *
 * The layout is table.py's (its module docstring): records of ENTRY bytes from TABLE_AT, the redo record's indices
 * at REDO_AT and its records at REDO_RECS, the header's live count at OFF_USED, the moved mark at OFF_MOVED, the
 * redo mark at OFF_MARK and the redo head (n, CRC-32, live count) at OFF_REDO_HEAD. table.py compares LAYOUT with
 * its own constants and does not use this module when they differ. Little-endian hosts only (the format's byte
 * order): elsewhere the module refuses to import and table.py's Python runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/file.h>

#define ENTRY 128
#define KEY_MAX 72
#define KEY_AT 56
#define PAGE 4096
#define REDO_MAX 4096
#define OFF_USED 24
#define OFF_MOVED 32
#define OFF_MARK 33
#define OFF_REDO_HEAD 40
#define REDO_AT PAGE
#define REDO_RECS (REDO_AT + 8 * REDO_MAX)
#define TABLE_AT (REDO_RECS + ((REDO_MAX * ENTRY + PAGE - 1) / PAGE) * PAGE)

/* A SIGKILL stops the process between two instructions: the stores of a commit must be in program order for the
 * mark to mean "the redo record is complete" and "the records are applied". Only the compiler could reorder them
 * (other processes read under the flock, a system call, so no hardware fence is needed). */
#define STEP() __atomic_signal_fence(__ATOMIC_SEQ_CST)

/* CRC-32 (zlib's, reflected 0xEDB88320), slice-by-8; the Python path uses zlib.crc32 on the same bytes. */
static uint32_t crc_table[8][256];

static void crc_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 1; k < 8; k++)
            crc_table[k][n] = (crc_table[k - 1][n] >> 8) ^ crc_table[0][crc_table[k - 1][n] & 0xff];
}

static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t len) {
    crc = ~crc;
    while (len >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= crc;
        crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^ crc_table[5][(lo >> 16) & 0xff] ^
              crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
              crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* Adler-32 (zlib's); with the CRC-32 it makes a key's 63-bit hash (table.py's stored_key). */
static uint32_t adler32(const unsigned char *p, size_t len) {
    uint32_t a = 1, b = 0;
    while (len > 0) {
        size_t n = len < 5552 ? len : 5552; /* zlib's NMAX: the sums cannot overflow 32 bits before the modulo */
        len -= n;
        while (n--) {
            a += *p++;
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    return (b << 16) | a;
}

/* The record at `e` as table.py's _REC unpacks it: (tag, key length, hash, a, b, c, d, e, key: 72 bytes). */
static PyObject *record(const unsigned char *e) {
    int64_t h, b, c;
    double a, d, f;
    memcpy(&h, e + 8, 8);
    memcpy(&a, e + 16, 8);
    memcpy(&b, e + 24, 8);
    memcpy(&c, e + 32, 8);
    memcpy(&d, e + 40, 8);
    memcpy(&f, e + 48, 8);
    PyObject *items[9] = {PyLong_FromLong(e[0]), PyLong_FromLong(e[1]), PyLong_FromLongLong(h),
                          PyFloat_FromDouble(a), PyLong_FromLongLong(b), PyLong_FromLongLong(c),
                          PyFloat_FromDouble(d), PyFloat_FromDouble(f),
                          PyBytes_FromStringAndSize((const char *)e + KEY_AT, KEY_MAX)};
    PyObject *t = PyTuple_New(9);
    for (int k = 0; k < 9; k++) {
        if (items[k] == NULL || t == NULL) {
            for (int j = 0; j < 9; j++)
                Py_XDECREF(items[j]);
            Py_XDECREF(t);
            return NULL;
        }
    }
    for (int k = 0; k < 9; k++)
        PyTuple_SET_ITEM(t, k, items[k]);
    return t;
}

/* An int as int64: PyLong_AsLongLong goes through a byte-array conversion for any int past 30 bits (a hash, a
 * budget in nano-USD); this one reads its digits. -1 with an error set when it is not an int or out of range. */
static int as_i64(PyObject *v, long long *out) {
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow) {
        PyErr_SetString(PyExc_OverflowError, "state table: an int past 64 bits");
        return -1;
    }
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* (i, obj) with obj's reference stolen; NULL (obj released) when out of memory. */
static PyObject *pair(Py_ssize_t i, PyObject *obj) {
    PyObject *k = PyLong_FromSsize_t(i), *t = k != NULL ? PyTuple_New(2) : NULL;
    if (t == NULL) {
        Py_XDECREF(k);
        Py_DECREF(obj);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, k);
    PyTuple_SET_ITEM(t, 1, obj);
    return t;
}

/* An update's record (the value of `w`) as bytes of ENTRY, or NULL with an error set. */
static const unsigned char *entry_of(PyObject *v) {
    if (!PyBytes_Check(v) || PyBytes_GET_SIZE(v) != ENTRY) {
        PyErr_SetString(PyExc_ValueError, "state table: an update's record is not 128 bytes");
        return NULL;
    }
    return (const unsigned char *)PyBytes_AS_STRING(v);
}

/* The mapping's buffer, checked to hold `cap` records after the header and redo area. */
static int table_buffer(PyObject *mm, Py_buffer *view, int flags, Py_ssize_t cap) {
    if (PyObject_GetBuffer(mm, view, flags) < 0)
        return -1;
    if (cap <= 0 || (cap & (cap - 1)) || view->len < (Py_ssize_t)TABLE_AT + cap * ENTRY) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_OSError, "state table: the mapping is smaller than its capacity");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(find_doc, "find(mm, w, kb, h, cap) -> (index, record or None): Table.find over the mapping `mm` and the\n"
                       "update in progress `w` (index -> record bytes).");

static PyObject *tc_find(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "find(mm, w, kb, h, cap)");
        return NULL;
    }
    PyObject *w = args[1], *kb = args[2];
    if (!PyDict_Check(w) || !PyBytes_Check(kb)) {
        PyErr_SetString(PyExc_TypeError, "find: w must be a dict and kb bytes");
        return NULL;
    }
    long long h;
    if (as_i64(args[3], &h) < 0)
        return NULL;
    Py_ssize_t cap = PyLong_AsSsize_t(args[4]);
    if (cap == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (table_buffer(args[0], &view, PyBUF_SIMPLE, cap) < 0)
        return NULL;
    const unsigned char *base = (const unsigned char *)view.buf + TABLE_AT;
    const char *key = PyBytes_AS_STRING(kb);
    Py_ssize_t klen = PyBytes_GET_SIZE(kb), mask = cap - 1, i = (Py_ssize_t)(h & mask);
    int overlay = PyDict_GET_SIZE(w) > 0;
    PyObject *out = NULL;
    for (Py_ssize_t probes = 0; probes < cap; probes++, i = (i + 1) & mask) {
        const unsigned char *e = base + i * ENTRY;
        if (overlay) {
            PyObject *k = PyLong_FromSsize_t(i);
            if (k == NULL)
                goto done;
            PyObject *v = PyDict_GetItemWithError(w, k); /* borrowed */
            Py_DECREF(k);
            if (v != NULL) {
                if ((e = entry_of(v)) == NULL)
                    goto done;
            } else if (PyErr_Occurred())
                goto done;
        }
        if (e[0] == 0) {
            Py_INCREF(Py_None);
            out = pair(i, Py_None);
            goto done;
        }
        int64_t eh;
        memcpy(&eh, e + 8, 8);
        if (eh == h && e[1] == klen && memcmp(e + KEY_AT, key, (size_t)klen) == 0) {
            PyObject *rec = record(e);
            if (rec != NULL)
                out = pair(i, rec);
            goto done;
        }
    }
    PyErr_SetString(PyExc_OSError, "state table: no free record on a whole probe (a damaged file)");
done:
    PyBuffer_Release(&view);
    return out;
}

PyDoc_STRVAR(pack_doc, "pack(tag, kb, h, a, b, c, d, e) -> bytes: one record, as table.py's _REC packs it.");

static PyObject *tc_pack(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "pack(tag, kb, h, a, b, c, d, e)");
        return NULL;
    }
    PyObject *kb = args[1];
    if (!PyBytes_Check(kb)) {
        PyErr_SetString(PyExc_TypeError, "pack: the key must be bytes");
        return NULL;
    }
    if (PyBytes_GET_SIZE(kb) > KEY_MAX) {
        PyErr_SetString(PyExc_ValueError, "pack: a key of at most 72 bytes (see stored_key)");
        return NULL;
    }
    long tag = PyLong_AsLong(args[0]);
    if (tag == -1 && PyErr_Occurred())
        return NULL;
    long long h, b, c;
    if (as_i64(args[2], &h) < 0 || as_i64(args[4], &b) < 0 || as_i64(args[5], &c) < 0)
        return NULL;
    double a = PyFloat_AsDouble(args[3]);
    double d = PyFloat_AsDouble(args[6]);
    double f = PyFloat_AsDouble(args[7]);
    if ((a == -1.0 || d == -1.0 || f == -1.0) && PyErr_Occurred())
        return NULL;
    if (tag < 0 || tag > 255) {
        PyErr_SetString(PyExc_ValueError, "pack: the tag must be a byte");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, ENTRY);
    if (out == NULL)
        return NULL;
    unsigned char *e = (unsigned char *)PyBytes_AS_STRING(out);
    memset(e, 0, ENTRY);
    e[0] = (unsigned char)tag;
    e[1] = (unsigned char)PyBytes_GET_SIZE(kb);
    memcpy(e + 8, &h, 8);
    memcpy(e + 16, &a, 8);
    memcpy(e + 24, &b, 8);
    memcpy(e + 32, &c, 8);
    memcpy(e + 40, &d, 8);
    memcpy(e + 48, &f, 8);
    memcpy(e + KEY_AT, PyBytes_AS_STRING(kb), (size_t)PyBytes_GET_SIZE(kb));
    return out;
}

/* Tell the test hook (table.crash_hook) a step of the commit; 0, or -1 with its exception set. */
static int step(PyObject *hook, const char *what) {
    if (hook == Py_None)
        return 0;
    PyObject *r = PyObject_CallFunction(hook, "s", what);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

PyDoc_STRVAR(commit_doc, "commit(mm, w, used, cap, hook) -> None: Table.commit's writes (the redo record, the mark,\n"
                         "the records, the live count, the mark cleared), telling `hook` each step unless None.");

static PyObject *tc_commit(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "commit(mm, w, used, cap, hook)");
        return NULL;
    }
    PyObject *w = args[1], *hook = args[4];
    if (!PyDict_Check(w)) {
        PyErr_SetString(PyExc_TypeError, "commit: w must be a dict");
        return NULL;
    }
    unsigned long long used = PyLong_AsUnsignedLongLong(args[2]);
    Py_ssize_t cap = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t n = PyDict_GET_SIZE(w);
    if (n == 0)
        Py_RETURN_NONE;
    if (n > REDO_MAX) {
        PyErr_SetString(PyExc_ValueError, "commit: more records than the redo record holds");
        return NULL;
    }
    Py_buffer view;
    if (table_buffer(args[0], &view, PyBUF_WRITABLE, cap) < 0)
        return NULL;
    unsigned char *p = (unsigned char *)view.buf;
    /* The update checked whole before anything is written; then the redo record; the records are applied from
     * it afterwards, so that the hook (Python) cannot change what is applied. */
    Py_ssize_t pos = 0, k = 0;
    PyObject *key, *value;
    while (PyDict_Next(w, &pos, &key, &value)) {
        Py_ssize_t i = PyLong_AsSsize_t(key);
        if (i == -1 && PyErr_Occurred())
            goto fail;
        if (entry_of(value) == NULL)
            goto fail;
        if (i < 0 || i >= cap) {
            PyErr_SetString(PyExc_ValueError, "commit: a record index past the capacity");
            goto fail;
        }
    }
    pos = 0;
    while (PyDict_Next(w, &pos, &key, &value)) {
        uint64_t u = (uint64_t)PyLong_AsSsize_t(key);
        memcpy(p + REDO_AT + 8 * k, &u, 8);
        memcpy(p + REDO_RECS + ENTRY * k, PyBytes_AS_STRING(value), ENTRY);
        k++;
    }
    uint32_t crc = crc32_update(crc32_update(0, p + REDO_AT, (size_t)(8 * n)), p + REDO_RECS, (size_t)(ENTRY * n));
    uint32_t n32 = (uint32_t)n;
    uint64_t used64 = (uint64_t)used;
    memcpy(p + OFF_REDO_HEAD, &n32, 4);
    memcpy(p + OFF_REDO_HEAD + 4, &crc, 4);
    memcpy(p + OFF_REDO_HEAD + 8, &used64, 8);
    STEP();
    if (step(hook, "logged") < 0)
        goto fail;
    p[OFF_MARK] = 1;
    STEP();
    if (step(hook, "marked") < 0)
        goto fail;
    for (k = 0; k < n; k++) {
        uint64_t i;
        memcpy(&i, p + REDO_AT + 8 * k, 8);
        memcpy(p + TABLE_AT + ENTRY * (Py_ssize_t)i, p + REDO_RECS + ENTRY * k, ENTRY);
        STEP();
        if (step(hook, "applying") < 0)
            goto fail;
    }
    memcpy(p + OFF_USED, &used64, 8);
    STEP();
    if (step(hook, "applied") < 0)
        goto fail;
    p[OFF_MARK] = 0;
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&view);
    return NULL;
}

/* A file descriptor, or -1 with an error set. */
static int as_fd(PyObject *v) {
    long fd = PyLong_AsLong(v);
    if (fd == -1 && PyErr_Occurred())
        return -1;
    if (fd < 0 || fd > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "state table: not a file descriptor");
        return -1;
    }
    return (int)fd;
}

PyDoc_STRVAR(lock_doc, "lock(fd, mm, cap) -> int: Table.try_lock's common case: flock(fd, LOCK_EX | LOCK_NB), then\n"
                       "the header of the mapping `mm`. The live count when the file is current and has no redo record\n"
                       "to finish; -1: another process holds the lock; -2: locked, but the file was moved or has a redo\n"
                       "record (the caller's Python handles both).");

static PyObject *tc_lock(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "lock(fd, mm, cap)");
        return NULL;
    }
    int fd = as_fd(args[0]);
    Py_ssize_t cap = PyLong_AsSsize_t(args[2]);
    if (fd < 0 || (cap == -1 && PyErr_Occurred()))
        return NULL;
    Py_buffer view;
    if (table_buffer(args[1], &view, PyBUF_SIMPLE, cap) < 0)
        return NULL;
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) { /* (never blocks: the GIL stays held) */
        PyBuffer_Release(&view);
        if (errno == EWOULDBLOCK || errno == EAGAIN)
            return PyLong_FromLong(-1);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    const unsigned char *p = (const unsigned char *)view.buf;
    long long out = -2;
    if (!p[OFF_MOVED] && !p[OFF_MARK]) {
        uint64_t used;
        memcpy(&used, p + OFF_USED, 8);
        out = (long long)used;
    }
    PyBuffer_Release(&view);
    return PyLong_FromLongLong(out);
}

PyDoc_STRVAR(unlock_doc, "unlock(fd) -> None: flock(fd, LOCK_UN).");

static PyObject *tc_unlock(PyObject *self, PyObject *arg) {
    int fd = as_fd(arg);
    if (fd < 0)
        return NULL;
    if (flock(fd, LOCK_UN) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(crc32_doc, "crc32(data, value=0) -> int: zlib.crc32, as commit computes it (for the tests).");

static PyObject *tc_crc32(PyObject *self, PyObject *args) {
    Py_buffer data;
    unsigned int value = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &data, &value))
        return NULL;
    uint32_t crc = crc32_update(value, (const unsigned char *)data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(crc);
}

PyDoc_STRVAR(key_hash_doc, "key_hash(kb) -> int: (adler32(kb) << 31) ^ crc32(kb), table.py's stored_key hash.");

static PyObject *tc_key_hash(PyObject *self, PyObject *kb) {
    if (!PyBytes_Check(kb)) {
        PyErr_SetString(PyExc_TypeError, "key_hash: the key must be bytes");
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(kb);
    size_t n = (size_t)PyBytes_GET_SIZE(kb);
    return PyLong_FromUnsignedLongLong(((unsigned long long)adler32(p, n) << 31) ^ crc32_update(0, p, n));
}

static PyMethodDef methods[] = {
    {"key_hash", tc_key_hash, METH_O, key_hash_doc},
    {"lock", (PyCFunction)(void (*)(void))tc_lock, METH_FASTCALL, lock_doc},
    {"unlock", tc_unlock, METH_O, unlock_doc},
    {"find", (PyCFunction)(void (*)(void))tc_find, METH_FASTCALL, find_doc},
    {"pack", (PyCFunction)(void (*)(void))tc_pack, METH_FASTCALL, pack_doc},
    {"commit", (PyCFunction)(void (*)(void))tc_commit, METH_FASTCALL, commit_doc},
    {"crc32", tc_crc32, METH_VARARGS, crc32_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fastgw.state._tablec",
    "The record operations of fastgw.state.table in C (see the source's head comment).", -1, methods,
};

PyMODINIT_FUNC PyInit__tablec(void) {
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    PyErr_SetString(PyExc_ImportError, "fastgw.state._tablec: a little-endian host only");
    return NULL;
#else
    crc_init();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    /* What table.py compares with its own constants before using this module. */
    PyObject *layout = Py_BuildValue("(iiiiiiiii)", ENTRY, KEY_MAX, TABLE_AT, REDO_AT, REDO_RECS, OFF_USED,
                                     OFF_MOVED, OFF_MARK, OFF_REDO_HEAD);
    if (layout == NULL || PyModule_AddObject(m, "LAYOUT", layout) < 0) {
        Py_XDECREF(layout);
        Py_DECREF(m);
        return NULL;
    }
    return m;
#endif
}
