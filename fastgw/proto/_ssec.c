/* The SSE decoder's line-end searches in C: `find_lf` and `find_lflf`, `bytes.find(b"\n", pos)` and
 * `bytes.find(b"\n\n", pos)` for fastgw/proto/sse.py's `SSEDecoder._run`.
 *
 * Why C (issue 18): the decoder finds each event's end with `bytes.find` from a position; compiled, that is a method
 * call looked up by name whose arguments are parsed as slice indices: ~1,300 instructions an event, where the search
 * itself is a memchr of a few hundred bytes. With the stream policies on, every event of an answer is decoded (a
 * 53-event answer: ~70,000 of a redacted stream's ~1,120,000). Here one call of two ints and a memchr or memmem.
 *
 * Both return what bytes.find returns for a start 0 <= pos (-1 when not found, a start past the end included), and
 * refuse a negative start (which bytes.find counts from the end: the decoder never passes one). sse.py's Python
 * forms, used where this module is not built, are the same (tests/proto/test_ssec.py holds them equal).
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* data and pos of a (bytes, int) call; -1 with an exception set otherwise. */
static int args_of(PyObject *const *args, Py_ssize_t nargs, const char *usage, const char **data, Py_ssize_t *size,
                   Py_ssize_t *pos) {
    if (nargs != 2 || !PyBytes_CheckExact(args[0]) || !PyLong_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    *pos = PyLong_AsSsize_t(args[1]);
    if (*pos == -1 && PyErr_Occurred())
        return -1;
    if (*pos < 0) {
        PyErr_SetString(PyExc_ValueError, "a negative start");
        return -1;
    }
    *data = PyBytes_AS_STRING(args[0]);
    *size = PyBytes_GET_SIZE(args[0]);
    return 0;
}

PyDoc_STRVAR(find_lf_doc, "find_lf(data, pos) -> int\n\ndata.find(b\"\\n\", pos), pos >= 0.");

static PyObject *sc_find_lf(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const char *data;
    Py_ssize_t size, pos;
    if (args_of(args, nargs, "find_lf(data: bytes, pos: int)", &data, &size, &pos) < 0)
        return NULL;
    if (pos >= size)
        return PyLong_FromLong(-1);
    const char *hit = memchr(data + pos, '\n', (size_t)(size - pos));
    return PyLong_FromSsize_t(hit == NULL ? -1 : hit - data);
}

PyDoc_STRVAR(find_lflf_doc, "find_lflf(data, pos) -> int\n\ndata.find(b\"\\n\\n\", pos), pos >= 0.");

static PyObject *sc_find_lflf(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const char *data;
    Py_ssize_t size, pos;
    if (args_of(args, nargs, "find_lflf(data: bytes, pos: int)", &data, &size, &pos) < 0)
        return NULL;
    if (size - pos < 2)
        return PyLong_FromLong(-1);
    const char *hit = memmem(data + pos, (size_t)(size - pos), "\n\n", 2);
    return PyLong_FromSsize_t(hit == NULL ? -1 : hit - data);
}

static PyMethodDef methods[] = {
    {"find_lf", (PyCFunction)(void (*)(void))sc_find_lf, METH_FASTCALL, find_lf_doc},
    {"find_lflf", (PyCFunction)(void (*)(void))sc_find_lflf, METH_FASTCALL, find_lflf_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fastgw.proto._ssec",
    "The SSE decoder's line-end searches in C (see the source's head comment).", -1, methods,
};

PyMODINIT_FUNC PyInit__ssec(void) {
    return PyModule_Create(&module);
}
