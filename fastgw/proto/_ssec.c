/* The SSE decoder's per-event work in C, for fastgw/proto/sse.py's `SSEDecoder._run`: `blocks`, a run of common
 * blocks (one `data: ...` line each) decoded in one call; `find_lflf`, `bytes.find(b"\n\n", pos)`, for the end of
 * any other block.
 *
 * Why C (issue 18): the decoder finds each event's end with `bytes.find` from a position; compiled, that is a method
 * call looked up by name whose arguments are parsed as slice indices: ~1,300 instructions an event, where the search
 * itself is a memchr of a few hundred bytes. With the stream policies on, every event of an answer is decoded (a
 * 53-event answer: ~70,000 of a redacted stream's ~1,120,000). Here one call of two ints and a memchr or memmem.
 * The common block's text then took more compiled: its `data: ` compared through a 6-byte slice, its text sliced
 * and decoded by codec name; `block_start` reads it from the buffer in the same call (a redacted 53-event stream:
 * 712,000 -> 687,000 instructions a request, bench/RESULTS.md 2026-12-07 11:30). Then `blocks` took a read's whole
 * run of them in one call, with no tuple and no ints per event: the 53-event stream 630,700 -> 599,300, a paced
 * stream's one-event read 3,200 -> 2,900 (bench/RESULTS.md 2026-12-07 15:00); `block_start` went with it (a block
 * `blocks` leaves is not a common one, so only its end is wanted).
 *
 * Both refuse a negative start (which bytes.find counts from the end: the decoder never passes one). sse.py's
 * Python forms, used where this module is not built, are the same (tests/proto/test_ssec.py holds them equal).
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

PyDoc_STRVAR(blocks_doc,
             "blocks(data, pos, raw_start) -> None | str | list\n\n"
             "Decode the run of common blocks (one `data: ` line, then a blank line) from pos on, blank lines before "
             "each included, up to the first block that is incomplete or not a common one. None where the block at "
             "pos is not one; its text (UTF-8, errors replaced) where one block ends data (its raw: data[raw_start:]); "
             "else [text, raw, text, raw, ...], each raw from raw_start, then from the previous block's end (data "
             "itself where that is all of it).");

static PyObject *sc_blocks(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_CheckExact(args[0]) || !PyLong_CheckExact(args[1]) || !PyLong_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "blocks(data: bytes, pos: int, raw_start: int)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]), raw_start = PyLong_AsSsize_t(args[2]);
    if ((pos == -1 || raw_start == -1) && PyErr_Occurred())
        return NULL;
    const char *data = PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    if (raw_start < 0 || pos < raw_start || pos > size) {
        PyErr_SetString(PyExc_ValueError, "blocks: 0 <= raw_start <= pos <= len(data) is not so");
        return NULL;
    }
    PyObject *out = NULL;
    for (;;) {
        Py_ssize_t p = pos;
        while (p < size && data[p] == '\n')
            p++;
        if (size - p < 8)  /* `data: ` and two LFs at least */
            break;
        const char *hit = memchr(data + p, '\n', (size_t)(size - p));
        if (hit == NULL)
            break;
        Py_ssize_t lf = hit - data, end = lf + 2;
        if (end > size || data[lf + 1] != '\n' || lf - p < 6 || memcmp(data + p, "data: ", 6) != 0)
            break;
        PyObject *text = PyUnicode_DecodeUTF8(data + p + 6, lf - p - 6, "replace");
        if (text == NULL) {
            Py_XDECREF(out);
            return NULL;
        }
        if (out == NULL && end == size)  /* one block, to the end: a paced stream's read (no list, no raw) */
            return text;
        PyObject *raw = end == size && raw_start == 0 ? Py_NewRef(args[0])
                                                      : PyBytes_FromStringAndSize(data + raw_start, end - raw_start);
        if (raw == NULL || (out == NULL && (out = PyList_New(0)) == NULL) || PyList_Append(out, text) < 0 ||
            PyList_Append(out, raw) < 0) {
            Py_DECREF(text);
            Py_XDECREF(raw);
            Py_XDECREF(out);
            return NULL;
        }
        Py_DECREF(text);
        Py_DECREF(raw);
        raw_start = pos = end;
    }
    return out != NULL ? out : Py_NewRef(Py_None);
}

static PyMethodDef methods[] = {
    {"blocks", (PyCFunction)(void (*)(void))sc_blocks, METH_FASTCALL, blocks_doc},
    {"find_lflf", (PyCFunction)(void (*)(void))sc_find_lflf, METH_FASTCALL, find_lflf_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fastgw.proto._ssec",
    "The SSE decoder's per-event work in C (see the source's head comment).", -1, methods,
};

PyMODINIT_FUNC PyInit__ssec(void) {
    return PyModule_Create(&module);
}
