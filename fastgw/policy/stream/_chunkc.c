/* The common OpenAI chat chunk read in one pass, for fastgw/policy/stream/chat.py's `ChatStreamPolicy.push`:
 * `plain_choice(data)` returns (index, text, content, refusal, reasoning_content, finish_reason) for a chunk
 * that is one choice of plain text, or None for anything else, which then takes the typed view (msgspec) as before.
 *
 * Why C (issue 18): with the stream policies on, every event of an answer is a JSON chunk the typed view decoded into
 * three msgspec Structs and a list, read back field by field and freed: under callgrind, in a redacted stream
 * through the gateway, msgspec's decode ~4,600 instructions an event of ~250 bytes, the Structs' frees ~700 and the
 * reading of their fields ~650. The chunk a model streams is nearly always one shape; read here, it costs ~2,800
 * (one pass over its bytes, sixteen at a time where SSE2 is, and the strings it holds). That stream, 53 events:
 * 1,038,201 -> 851,529 instructions a request (bench/RESULTS.md, 2026-12-07 08:45).
 *
 * What is read here, and only this (anything else returns None, never a different answer): a top-level object
 * whose "choices" is an array of exactly one object and whose "usage", if present, is null; its other members are
 * strings without escapes, numbers, true, false or null (skipped, as the typed view skips them). The choice's
 * members are among "index" (an integer of at most 9 digits, not negative), "delta" (null or an object), "text",
 * "finish_reason" (string or null) and "logprobs" (null); the delta's among "role", "content", "refusal",
 * "reasoning_content" (string or null) and "tool_calls" (null). No member twice, no escape in a member's name,
 * JSON's own whitespace only, nothing after the object. A string's escapes are JSON's (a \u surrogate pair is one
 * character; a lone surrogate returns None). Where this returns a tuple, the typed view reads the same values
 * (tests/policy/test_chunkc.py holds it against the typed view, on generated and mutated chunks).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define DECLINE (-1) /* not the plain shape: None */
#define FAIL (-2)    /* an exception is set (memory) */

typedef struct {
    const unsigned char *p, *end;
    int ascii; /* the str is ASCII: its bytes are its characters */
} Cur;

static inline void ws(Cur *c) {
    /* (Nearly always no whitespace at all: one comparison says so.) */
    while (c->p < c->end && *c->p <= ' ' && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t'))
        c->p++;
}

/* The next byte, after whitespace, is `want`: consumed. */
static inline int expect(Cur *c, unsigned char want) {
    ws(c);
    if (c->p >= c->end || *c->p != want)
        return DECLINE;
    c->p++;
    return 0;
}

/* 1 for the bytes that end a run of a string's plain characters: the quote, the backslash, control characters. */
static unsigned char STOP[256];

#ifdef __SSE2__
#include <emmintrin.h>

/* p at the next stop byte of a string (or the end): sixteen bytes a step (SSE2, every x86-64), the last few one at
 * a time. Callgrind counted ~5 instructions a byte for the byte loop alone. */
static inline const unsigned char *run(const unsigned char *p, const unsigned char *end) {
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), below = _mm_set1_epi8(0x1f);
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)p);
        /* bytes below 0x20: min(x, 0x1f) == x, unsigned */
        __m128i ctl = _mm_cmpeq_epi8(_mm_min_epu8(x, below), x);
        int hit = _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)),
                                                 ctl));
        if (hit)
            return p + __builtin_ctz((unsigned)hit);
        p += 16;
    }
    while (p < end && !STOP[*p])
        p++;
    return p;
}
#else
/* p at the next stop byte of a string (or the end). */
static inline const unsigned char *run(const unsigned char *p, const unsigned char *end) {
    while (p < end && !STOP[*p])
        p++;
    return p;
}
#endif

/* A member's name, the opening quote consumed: no escape, no control character; then its colon. */
static int name(Cur *c, const unsigned char **k, Py_ssize_t *klen) {
    const unsigned char *s = c->p, *q = run(s, c->end);
    if (q >= c->end || *q != '"')
        return DECLINE;
    *k = s;
    *klen = q - s;
    c->p = q + 1;
    return expect(c, ':');
}

static inline int is(const unsigned char *k, Py_ssize_t klen, const char *want, Py_ssize_t wlen) {
    return klen == wlen && k[0] == (unsigned char)want[0] && memcmp(k, want, (size_t)wlen) == 0;
}

/* The literal `lit` (true, false, null) at p: consumed. */
static inline int literal(Cur *c, const char *lit, Py_ssize_t n) {
    if (c->end - c->p < n || memcmp(c->p, lit, (size_t)n) != 0)
        return DECLINE;
    c->p += n;
    return 0;
}
#define LITERAL(c, lit) literal(c, lit, (Py_ssize_t)sizeof(lit) - 1)

static inline int at_digit(Cur *c) {
    return c->p < c->end && *c->p >= '0' && *c->p <= '9';
}

/* A JSON number (RFC 8259's grammar), skipped. */
static int skip_number(Cur *c) {
    if (c->p < c->end && *c->p == '-')
        c->p++;
    if (!at_digit(c))
        return DECLINE;
    if (*c->p == '0')
        c->p++;
    else
        while (at_digit(c))
            c->p++;
    if (c->p < c->end && *c->p == '.') {
        c->p++;
        if (!at_digit(c))
            return DECLINE;
        while (at_digit(c))
            c->p++;
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-'))
            c->p++;
        if (!at_digit(c))
            return DECLINE;
        while (at_digit(c))
            c->p++;
    }
    return 0;
}

/* A skipped member's value: a string without escapes, a number, true, false or null. */
static int skip_value(Cur *c) {
    ws(c);
    if (c->p >= c->end)
        return DECLINE;
    switch (*c->p) {
    case '"':
        c->p = run(c->p + 1, c->end);
        if (c->p >= c->end || *c->p != '"')
            return DECLINE;
        c->p++;
        return 0;
    case 't':
        return LITERAL(c, "true");
    case 'f':
        return LITERAL(c, "false");
    case 'n':
        return LITERAL(c, "null");
    default:
        return skip_number(c);
    }
}

static int hex4(const unsigned char *s, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char h = s[i];
        v <<= 4;
        if (h >= '0' && h <= '9')
            v |= (unsigned)(h - '0');
        else if (h >= 'a' && h <= 'f')
            v |= (unsigned)(h - 'a' + 10);
        else if (h >= 'A' && h <= 'F')
            v |= (unsigned)(h - 'A' + 10);
        else
            return DECLINE;
    }
    *out = v;
    return 0;
}

/* The string of the bytes s..s+n, which hold no escape (valid UTF-8: they come from a str). */
static PyObject *plain_str(const Cur *c, const unsigned char *s, Py_ssize_t n) {
    if (c->ascii) {
        PyObject *u = PyUnicode_New(n, 127);
        if (u != NULL && n)
            memcpy(PyUnicode_1BYTE_DATA(u), s, (size_t)n);
        return u;
    }
    return PyUnicode_DecodeUTF8((const char *)s, n, "strict");
}

/* A string with escapes, from its opening quote's next byte s to its closing quote q (found, every escape's
 * letter skipped). Decoded to UTF-8 first: never longer than the escaped form. */
static int escaped_str(const unsigned char *s, const unsigned char *q, PyObject **out) {
    unsigned char small[256];
    Py_ssize_t cap = q - s;
    unsigned char *buf = cap <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)cap);
    if (buf == NULL) {
        PyErr_NoMemory();
        return FAIL;
    }
    int rc = 0;
    unsigned char *o = buf;
    const unsigned char *p = s;
    while (p < q) {
        if (*p != '\\') {
            *o++ = *p++;
            continue;
        }
        p++; /* p < q: the first pass skipped a byte after every backslash */
        unsigned char e = *p++;
        unsigned cp;
        switch (e) {
        case '"': case '\\': case '/': *o++ = e; continue;
        case 'b': *o++ = '\b'; continue;
        case 'f': *o++ = '\f'; continue;
        case 'n': *o++ = '\n'; continue;
        case 'r': *o++ = '\r'; continue;
        case 't': *o++ = '\t'; continue;
        case 'u': break;
        default: rc = DECLINE; goto done;
        }
        if (q - p < 4 || hex4(p, &cp) < 0) {
            rc = DECLINE;
            goto done;
        }
        p += 4;
        if (cp >= 0xD800 && cp <= 0xDFFF) {
            unsigned lo;
            if (cp >= 0xDC00 || q - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &lo) < 0 || lo < 0xDC00 ||
                lo > 0xDFFF) {
                rc = DECLINE; /* a lone surrogate: the typed view decides */
                goto done;
            }
            p += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        if (cp < 0x80) {
            *o++ = (unsigned char)cp;
        } else if (cp < 0x800) {
            *o++ = (unsigned char)(0xC0 | (cp >> 6));
            *o++ = (unsigned char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            *o++ = (unsigned char)(0xE0 | (cp >> 12));
            *o++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
            *o++ = (unsigned char)(0x80 | (cp & 0x3F));
        } else {
            *o++ = (unsigned char)(0xF0 | (cp >> 18));
            *o++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
            *o++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
            *o++ = (unsigned char)(0x80 | (cp & 0x3F));
        }
    }
    *out = PyUnicode_DecodeUTF8((const char *)buf, o - buf, "strict");
    if (*out == NULL)
        rc = FAIL;
done:
    if (buf != small)
        PyMem_Free(buf);
    return rc;
}

/* A string or null value: *out a new str, or NULL for null. */
static int str_or_null(Cur *c, PyObject **out) {
    *out = NULL;
    ws(c);
    if (c->p >= c->end)
        return DECLINE;
    if (*c->p == 'n')
        return LITERAL(c, "null");
    if (*c->p != '"')
        return DECLINE;
    const unsigned char *s = ++c->p, *q = s;
    int escaped = 0;
    for (;;) {
        q = run(q, c->end);
        if (q >= c->end || *q < 0x20)
            return DECLINE;
        if (*q == '"')
            break;
        escaped = 1; /* a backslash: its escape's letter is skipped here, checked when decoded */
        if (++q >= c->end || *q < 0x20)
            return DECLINE;
        q++;
    }
    if (q >= c->end)
        return DECLINE;
    c->p = q + 1;
    if (!escaped) {
        *out = plain_str(c, s, q - s);
        return *out == NULL ? FAIL : 0;
    }
    return escaped_str(s, q, out);
}

/* The fields read: text, content, refusal, reasoning_content, finish_reason (new references or NULL), index, and
 * whether the chunk's "choices" was read. */
typedef struct {
    PyObject *text, *content, *refusal, *reasoning, *finish;
    long index;
    int choices;
} Fields;

typedef struct {
    const char *s;
    Py_ssize_t n;
} Name;
#define NAME(lit) {lit, (Py_ssize_t)sizeof(lit) - 1}

/* Members of an object, its opening brace consumed: calls `member` for each (its name's index in `names`, -1 for
 * another; the colon consumed). A name of `names` may appear once. */
typedef int (*member_fn)(Cur *c, int which, Fields *f);

static int members(Cur *c, const Name *names, int count, member_fn member, Fields *f) {
    unsigned seen = 0;
    ws(c);
    if (c->p < c->end && *c->p == '}') {
        c->p++;
        return 0;
    }
    for (;;) {
        const unsigned char *k;
        Py_ssize_t klen;
        int rc = expect(c, '"');
        if (rc < 0 || (rc = name(c, &k, &klen)) < 0)
            return rc;
        int which = -1;
        for (int i = 0; i < count; i++)
            if (is(k, klen, names[i].s, names[i].n)) {
                which = i;
                break;
            }
        if (which >= 0) {
            if (seen & (1u << which))
                return DECLINE;
            seen |= 1u << which;
        }
        if ((rc = member(c, which, f)) < 0)
            return rc;
        ws(c);
        if (c->p >= c->end)
            return DECLINE;
        if (*c->p == '}') {
            c->p++;
            return 0;
        }
        if (*c->p != ',')
            return DECLINE;
        c->p++;
    }
}

static const Name DELTA_NAMES[] = {NAME("role"), NAME("content"), NAME("refusal"), NAME("reasoning_content"),
                                   NAME("tool_calls")};

static int delta_member(Cur *c, int which, Fields *f) {
    PyObject *role;
    int rc;
    switch (which) {
    case 0:
        rc = str_or_null(c, &role);
        Py_XDECREF(role);
        return rc;
    case 1: return str_or_null(c, &f->content);
    case 2: return str_or_null(c, &f->refusal);
    case 3: return str_or_null(c, &f->reasoning);
    case 4: ws(c); return LITERAL(c, "null");
    default: return DECLINE; /* a field the typed view does not know: its loose view walks it */
    }
}

static const Name CHOICE_NAMES[] = {NAME("index"), NAME("delta"), NAME("text"), NAME("finish_reason"),
                                    NAME("logprobs")};

static int choice_member(Cur *c, int which, Fields *f) {
    ws(c);
    switch (which) {
    case 0: {
        const unsigned char *s = c->p;
        long v = 0;
        while (at_digit(c) && c->p - s < 10)
            v = v * 10 + (*c->p++ - '0');
        Py_ssize_t n = c->p - s;
        if (n == 0 || n > 9 || (n > 1 && *s == '0') || (c->p < c->end && (at_digit(c) || *c->p == '.' ||
                                                                             *c->p == 'e' || *c->p == 'E')))
            return DECLINE;
        f->index = v;
        return 0;
    }
    case 1:
        if (c->p < c->end && *c->p == 'n')
            return LITERAL(c, "null");
        if (expect(c, '{') < 0)
            return DECLINE;
        return members(c, DELTA_NAMES, 5, delta_member, f);
    case 2: return str_or_null(c, &f->text);
    case 3: return str_or_null(c, &f->finish);
    case 4: return LITERAL(c, "null");
    default: return DECLINE;
    }
}

static const Name CHUNK_NAMES[] = {NAME("choices"), NAME("usage")};

static int chunk_member(Cur *c, int which, Fields *f) {
    int rc;
    switch (which) {
    case 0: /* exactly one choice */
        if (expect(c, '[') < 0 || expect(c, '{') < 0)
            return DECLINE;
        if ((rc = members(c, CHOICE_NAMES, 5, choice_member, f)) < 0)
            return rc;
        if (expect(c, ']') < 0)
            return DECLINE;
        f->choices = 1;
        return 0;
    case 1:
        ws(c);
        return LITERAL(c, "null");
    default:
        return skip_value(c);
    }
}

PyDoc_STRVAR(plain_choice_doc,
             "plain_choice(data) -> (index, text, content, refusal, reasoning_content, finish_reason) | None\n\n"
             "The one plain-text choice of an OpenAI chat chunk, or None where the chunk is not that shape.");

static PyObject *plain_choice(PyObject *self, PyObject *arg) {
    if (!PyUnicode_CheckExact(arg)) {
        PyErr_SetString(PyExc_TypeError, "plain_choice(data: str)");
        return NULL;
    }
    Cur c;
    Py_ssize_t n;
    if (PyUnicode_IS_ASCII(arg)) {
        c.p = PyUnicode_1BYTE_DATA(arg);
        n = PyUnicode_GET_LENGTH(arg);
        c.ascii = 1;
    } else {
        const char *s = PyUnicode_AsUTF8AndSize(arg, &n);
        if (s == NULL) { /* a lone surrogate: not JSON's text */
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        c.p = (const unsigned char *)s;
        c.ascii = 0;
    }
    c.end = c.p + n;
    Fields f = {NULL, NULL, NULL, NULL, NULL, 0, 0};
    int rc = expect(&c, '{');
    if (rc == 0)
        rc = members(&c, CHUNK_NAMES, 2, chunk_member, &f);
    if (rc == 0) {
        ws(&c);
        if (c.p != c.end || !f.choices)
            rc = DECLINE;
    }
    PyObject *items[5] = {f.text, f.content, f.refusal, f.reasoning, f.finish};
    if (rc == 0) {
        PyObject *out = PyTuple_New(6), *index = out != NULL ? PyLong_FromLong(f.index) : NULL;
        if (index != NULL) {
            PyTuple_SET_ITEM(out, 0, index);
            for (int i = 0; i < 5; i++) /* the tuple takes the strings */
                PyTuple_SET_ITEM(out, i + 1, items[i] != NULL ? items[i] : Py_NewRef(Py_None));
            return out;
        }
        Py_XDECREF(out);
        rc = FAIL;
    }
    for (int i = 0; i < 5; i++)
        Py_XDECREF(items[i]);
    if (rc == FAIL)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"plain_choice", plain_choice, METH_O, plain_choice_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fastgw.policy.stream._chunkc",
    "The common OpenAI chat chunk read in one pass (see the source's head comment).", -1, methods,
};

PyMODINIT_FUNC PyInit__chunkc(void) {
    for (int i = 0; i < 0x20; i++)
        STOP[i] = 1;
    STOP['"'] = STOP['\\'] = 1;
    return PyModule_Create(&module);
}
