/* The holdback's per-scan work in C, for fastgw/scan/scanner.py's `StreamScanner`: `runs`, each holdback group's
 * trailing run of bytes in its alphabet, updated from a scan's new bytes; `hold`, the groups' holdback read from
 * the kept tail of the canonical text.
 *
 * Why C (issue 18): a paced stream settles after every event, and with the pii-detector's six groups each scan made
 * six `bytes.rstrip` method calls (each a new bytes object) and each settle up to six regex searches or Python calls,
 * each on a new suffix slice, through attributes of interpreted group objects: ~10,300 of a chained paced event's
 * ~46,000 instructions, ~1,200 left with this module (both calls) (callgrind medians, bench/RESULTS.md 2026-12-07 20:30). Here one
 * call each, over 256-byte lookup tables that `ScanDB` builds once: `members` (byte i of group g's table is 1 when
 * byte i is in its alphabet) and each group's `_Group.spec` (its kind and width, its start bytes). A group whose
 * holdback is a Python function (`Pattern.hold_from`) is left to the caller, which lists it in `left`, unless the
 * pattern declares what that function answers for the run at hand (`Pattern.hold_word`: the lower-case grouped
 * IBAN in a run of prose with no digit, the common case); so is one whose run reaches past the kept tail.
 *
 * scanner.py's Python forms, used where this module is not built, are the same (tests/scan/test_holdc.py holds them
 * equal on random groups and texts).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Group kinds (`_Group.kind` in fastgw/scan/database.py): the run from its first start byte is held; the whole run
 * is held (any byte of the alphabet can start a match); the caller decides (a Python `hold_from`); the run's last
 * word is held when short and at a word start, unless a byte of the gate is in the run (then the caller decides). */
enum { KIND_STARTS = 0, KIND_ANYWHERE = 1, KIND_PYTHON = 2, KIND_WORD = 3 };

/* A group as `_Group.spec` packs it: kind, last-word bound, padding, width (little-endian), start bytes, gate. */
#define SPEC_HEAD 16
#define SPEC_SIZE (SPEC_HEAD + 512)

PyDoc_STRVAR(runs_doc,
             "runs(data, members, runs) -> None\n\n"
             "For every group g (len(runs) of them), runs[g] becomes the length of the trailing run of bytes of its "
             "alphabet (members[256*g:256*g+256]) once `data` is appended to the text: the run within data, or "
             "runs[g] + len(data) when all of data is in it.");

static PyObject *hc_runs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[1]) || !PyList_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "runs(data: bytes, members: bytes, runs: list[int])");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    const unsigned char *members = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    PyObject *runs = args[2];
    Py_ssize_t groups = PyList_GET_SIZE(runs);
    if (PyBytes_GET_SIZE(args[1]) != 256 * groups) {
        PyErr_SetString(PyExc_ValueError, "members must hold 256 bytes per group");
        return NULL;
    }
    for (Py_ssize_t g = 0; g < groups; g++) {
        const unsigned char *in = members + 256 * g;
        Py_ssize_t k = n;
        while (k > 0 && in[data[k - 1]])
            k--;
        Py_ssize_t run = n - k;
        if (k == 0) {
            Py_ssize_t before = PyLong_AsSsize_t(PyList_GET_ITEM(runs, g));
            if (before == -1 && PyErr_Occurred())
                return NULL;
            run += before;
        }
        PyObject *v = PyLong_FromSsize_t(run);
        if (v == NULL)
            return NULL;
        PyObject *old = PyList_GET_ITEM(runs, g);
        PyList_SET_ITEM(runs, g, v);
        Py_DECREF(old);
    }
    Py_RETURN_NONE;
}

static int is_alnum(unsigned char c) {
    return (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z');
}

PyDoc_STRVAR(hold_doc,
             "hold(tail, runs, hold, spec, left) -> int\n\n"
             "The largest of `hold` and each group's holdback (spec: each group's `_Group.spec`): its run (runs[g], at "
             "most its width) from its first start byte to the end of `tail` (none when no start byte is in it), the "
             "whole run (kind 1), or the run's last word (kind 3: see `Pattern.hold_word`). A group of kind 2, one of "
             "kind 3 whose run holds a byte of its gate, or one whose run is longer than tail, is appended to `left` "
             "(cleared first) for the caller; a group whose run is no longer than the hold so far is skipped (its "
             "holdback is at most its run).");

static PyObject *hc_hold(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyBytes_CheckExact(args[0]) || !PyList_CheckExact(args[1]) || !PyLong_CheckExact(args[2]) ||
        !PyBytes_CheckExact(args[3]) || !PyList_CheckExact(args[4])) {
        PyErr_SetString(PyExc_TypeError, "hold(tail: bytes, runs: list[int], hold: int, spec: bytes, left: list[int])");
        return NULL;
    }
    const unsigned char *tail = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t have = PyBytes_GET_SIZE(args[0]);
    PyObject *runs = args[1], *left = args[4];
    Py_ssize_t hold = PyLong_AsSsize_t(args[2]);
    if (hold == -1 && PyErr_Occurred())
        return NULL;
    const unsigned char *spec = (const unsigned char *)PyBytes_AS_STRING(args[3]);
    Py_ssize_t groups = PyList_GET_SIZE(runs);
    if (PyBytes_GET_SIZE(args[3]) != SPEC_SIZE * groups) {
        PyErr_SetString(PyExc_ValueError, "spec must describe every group of runs");
        return NULL;
    }
    if (PyList_GET_SIZE(left) && PyList_SetSlice(left, 0, PyList_GET_SIZE(left), NULL) < 0)
        return NULL;
    for (Py_ssize_t g = 0; g < groups; g++) {
        Py_ssize_t r = PyLong_AsSsize_t(PyList_GET_ITEM(runs, g));
        if (r == -1 && PyErr_Occurred())
            return NULL;
        if (r <= hold)
            continue;
        const unsigned char *sp = spec + SPEC_SIZE * g, *starts = sp + SPEC_HEAD, *gate = starts + 256;
        int64_t width;
        memcpy(&width, sp + 8, sizeof width);  /* little-endian: x86-64 and aarch64 Linux */
        if (r > width)
            r = (Py_ssize_t)width;
        unsigned char kind = sp[0];
        const unsigned char *run = tail + have - r;
        int caller = kind == KIND_PYTHON || r > have;
        if (!caller && kind == KIND_WORD) {
            for (Py_ssize_t j = 0; j < r; j++) {
                if (gate[run[j]]) {
                    caller = 1;
                    break;
                }
            }
        }
        if (caller) {
            PyObject *i = PyLong_FromSsize_t(g);
            if (i == NULL || PyList_Append(left, i) < 0) {
                Py_XDECREF(i);
                return NULL;
            }
            Py_DECREF(i);
            continue;
        }
        Py_ssize_t h;
        if (kind == KIND_ANYWHERE) {
            h = r;
        } else if (kind == KIND_WORD) {
            Py_ssize_t w = 0;
            while (w < r && starts[run[r - 1 - w]])
                w++;
            h = w <= sp[1] && (w == r || !is_alnum(run[r - 1 - w])) ? w : 0;
        } else {
            Py_ssize_t j = 0;
            while (j < r && !starts[run[j]])
                j++;
            if (j == r)
                continue;  /* no byte of the run can start a match */
            h = r - j;
        }
        if (h > hold)
            hold = h;
    }
    return PyLong_FromSsize_t(hold);
}

static PyMethodDef methods[] = {
    {"runs", (PyCFunction)(void (*)(void))hc_runs, METH_FASTCALL, runs_doc},
    {"hold", (PyCFunction)(void (*)(void))hc_hold, METH_FASTCALL, hold_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fastgw.scan._holdc",
    "The holdback's per-scan work in C (see the source's head comment).", -1, methods,
};

PyMODINIT_FUNC PyInit__holdc(void) {
    return PyModule_Create(&module);
}
