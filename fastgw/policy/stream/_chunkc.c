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
    const unsigned char *start, *p, *end;
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

/* The fields read: text, content, refusal, reasoning_content, finish_reason (new references or NULL), index,
 * whether the chunk's "choices" was read, and the members seen so far in each object being read (by depth: the
 * chunk 0, its choice 1, the delta 2). */
typedef struct Mark Mark;
typedef struct {
    PyObject *text, *content, *refusal, *reasoning, *finish;
    long index;
    int choices;
    unsigned seen[3];
    Mark *mark; /* where the first text value's state is kept (a PlainReader's read), or NULL */
} Fields;

/* The state a read had on reaching its first text value (content, refusal, reasoning_content or text): the bytes
 * before it (`off` of them), the fields read so far (references owned), which slot the value goes to and at what
 * depth, and where the value ended (`tail`). A later chunk with the same bytes before its text value is in the
 * same state there: the reader is a function of the bytes it has read. */
struct Mark {
    Py_ssize_t off, tail;
    int slot, depth; /* slot -1: no mark taken */
    Fields at;
};

enum { SLOT_TEXT, SLOT_CONTENT, SLOT_REFUSAL, SLOT_REASONING };

static PyObject **slot_of(Fields *f, int slot) {
    switch (slot) {
    case SLOT_TEXT: return &f->text;
    case SLOT_CONTENT: return &f->content;
    case SLOT_REFUSAL: return &f->refusal;
    default: return &f->reasoning;
    }
}

static void fields_clear(Fields *f) {
    Py_CLEAR(f->text);
    Py_CLEAR(f->content);
    Py_CLEAR(f->refusal);
    Py_CLEAR(f->reasoning);
    Py_CLEAR(f->finish);
}

/* A copy of `from` whose strings are new references. */
static void fields_copy(Fields *to, const Fields *from) {
    *to = *from;
    Py_XINCREF(to->text);
    Py_XINCREF(to->content);
    Py_XINCREF(to->refusal);
    Py_XINCREF(to->reasoning);
    Py_XINCREF(to->finish);
}

/* A text value (string or null) into its slot; the first of a read with a Mark keeps the state before it. */
static int text_value(Cur *c, Fields *f, int slot, int depth) {
    Mark *m = f->mark;
    if (m == NULL || m->slot >= 0)
        return str_or_null(c, slot_of(f, slot));
    m->off = c->p - c->start;
    m->slot = slot;
    m->depth = depth;
    fields_copy(&m->at, f);
    m->at.mark = NULL;
    int rc = str_or_null(c, slot_of(f, slot));
    m->tail = c->p - c->start;
    return rc;
}

typedef struct {
    const char *s;
    Py_ssize_t n;
} Name;
#define NAME(lit) {lit, (Py_ssize_t)sizeof(lit) - 1}

/* Members of an object, its opening brace consumed: calls `member` for each (its name's index in `names`, -1 for
 * another; the colon consumed). A name of `names` may appear once. `resume`: the object was being read at `depth`
 * and a member's value has just been read (a PlainReader's read from a Mark): go on after it. */
typedef int (*member_fn)(Cur *c, int which, Fields *f);

static int members(Cur *c, const Name *names, int count, member_fn member, Fields *f, int depth, int resume) {
    unsigned seen = f->seen[depth];
    if (!resume) {
        seen = 0;
        ws(c);
        if (c->p < c->end && *c->p == '}') {
            c->p++;
            return 0;
        }
    }
    for (;;) {
        if (!resume) {
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
            f->seen[depth] = seen;
            if ((rc = member(c, which, f)) < 0)
                return rc;
        }
        resume = 0;
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
    case 1: return text_value(c, f, SLOT_CONTENT, 2);
    case 2: return text_value(c, f, SLOT_REFUSAL, 2);
    case 3: return text_value(c, f, SLOT_REASONING, 2);
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
        return members(c, DELTA_NAMES, 5, delta_member, f, 2, 0);
    case 2: return text_value(c, f, SLOT_TEXT, 1);
    case 3: return str_or_null(c, &f->finish);
    case 4: return LITERAL(c, "null");
    default: return DECLINE;
    }
}

static const Name CHUNK_NAMES[] = {NAME("choices"), NAME("usage")};

/* After the one choice: the array's end. */
static int end_choices(Cur *c, Fields *f) {
    if (expect(c, ']') < 0)
        return DECLINE;
    f->choices = 1;
    return 0;
}

static int chunk_member(Cur *c, int which, Fields *f) {
    int rc;
    switch (which) {
    case 0: /* exactly one choice */
        if (expect(c, '[') < 0 || expect(c, '{') < 0)
            return DECLINE;
        if ((rc = members(c, CHOICE_NAMES, 5, choice_member, f, 1, 0)) < 0)
            return rc;
        return end_choices(c, f);
    case 1:
        ws(c);
        return LITERAL(c, "null");
    default:
        return skip_value(c);
    }
}

/* The UTF-8 bytes of a str (an ASCII str's own) into c; DECLINE for a str with a lone surrogate (not JSON's
 * text). */
static int view(PyObject *arg, Cur *c) {
    Py_ssize_t n;
    if (PyUnicode_IS_ASCII(arg)) {
        c->start = PyUnicode_1BYTE_DATA(arg);
        n = PyUnicode_GET_LENGTH(arg);
        c->ascii = 1;
    } else {
        const char *s = PyUnicode_AsUTF8AndSize(arg, &n);
        if (s == NULL) {
            PyErr_Clear();
            return DECLINE;
        }
        c->start = (const unsigned char *)s;
        c->ascii = 0;
    }
    c->p = c->start;
    c->end = c->start + n;
    return 0;
}

/* A read's str argument viewed into c: 0; DECLINE for a str JSON cannot carry; FAIL (a TypeError) for anything
 * but a str. */
static int str_arg(PyObject *arg, const char *usage, Cur *c) {
    if (!PyUnicode_CheckExact(arg)) {
        PyErr_SetString(PyExc_TypeError, usage);
        return FAIL;
    }
    return view(arg, c);
}

/* After the chunk's members: nothing but whitespace, and its one choice read. */
static int end_chunk(Cur *c, const Fields *f) {
    ws(c);
    return c->p == c->end && f->choices ? 0 : DECLINE;
}

/* A whole chunk, from its first byte. */
static int read_chunk(Cur *c, Fields *f) {
    int rc = expect(c, '{');
    if (rc == 0)
        rc = members(c, CHUNK_NAMES, 2, chunk_member, f, 0, 0);
    return rc < 0 ? rc : end_chunk(c, f);
}

/* The rest of a chunk after the value at a Mark (at `depth`: 2 the delta's, 1 the choice's). */
static int read_after(Cur *c, Fields *f, int depth) {
    int rc;
    if (depth == 2 && (rc = members(c, DELTA_NAMES, 5, delta_member, f, 2, 1)) < 0)
        return rc;
    if ((rc = members(c, CHOICE_NAMES, 5, choice_member, f, 1, 1)) < 0 || (rc = end_choices(c, f)) < 0 ||
        (rc = members(c, CHUNK_NAMES, 2, chunk_member, f, 0, 1)) < 0)
        return rc;
    return end_chunk(c, f);
}

/* A read's answer: the tuple (taking f's strings), None where it declined, NULL with an exception set. */
static PyObject *answer(int rc, Fields *f) {
    if (rc == 0) {
        PyObject *out = PyTuple_New(6), *index = out != NULL ? PyLong_FromLong(f->index) : NULL;
        if (index != NULL) {
            PyObject *items[5] = {f->text, f->content, f->refusal, f->reasoning, f->finish};
            PyTuple_SET_ITEM(out, 0, index);
            for (int i = 0; i < 5; i++) /* the tuple takes the strings */
                PyTuple_SET_ITEM(out, i + 1, items[i] != NULL ? items[i] : Py_NewRef(Py_None));
            return out;
        }
        Py_XDECREF(out);
        rc = FAIL;
    }
    fields_clear(f);
    if (rc == FAIL)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(plain_choice_doc,
             "plain_choice(data) -> (index, text, content, refusal, reasoning_content, finish_reason) | None\n\n"
             "The one plain-text choice of an OpenAI chat chunk, or None where the chunk is not that shape.");

static PyObject *plain_choice(PyObject *self, PyObject *arg) {
    Cur c;
    int rc = str_arg(arg, "plain_choice(data: str)", &c);
    if (rc < 0)
        return rc == FAIL ? NULL : Py_NewRef(Py_None);
    Fields f = {0};
    return answer(read_chunk(&c, &f), &f);
}

/* A chunk whose one choice is index 0 with its content alone, nearly every chunk a model streams: a PlainReader
 * answers it with that str, no tuple to build, take apart and free. */
static int content_slot_alone(const Fields *f) {
    return f->index == 0 && f->text == NULL && f->refusal == NULL && f->reasoning == NULL && f->finish == NULL;
}

static int content_alone(const Fields *f) {
    return f->content != NULL && content_slot_alone(f);
}

/* PlainReader: plain_choice for the chunks of one stream, which nearly all share their bytes up to the text value
 * (id, object, created, model, system_fingerprint, the choice's index, the delta's opening) and often after it.
 * The reader keeps its last whole read's chunk and its Mark; a chunk with the same bytes before its text value is
 * read from there (one memcmp), and where its bytes after the value are the same as well, its answer is that
 * chunk's with this value. Any other chunk is read whole. Every answer is plain_choice's, given as the content str
 * alone where that is (0, None, content, None, None, None) (tests/policy/test_chunkc.py). Callgrind, bench's
 * 232-byte chunk: ~2,750 instructions read whole, ~570 from the Mark; a redacted 53-event stream through the
 * gateway 816,000 -> 711,000 instructions a request, and 677,000 -> 652,000 with the content alone as a str
 * (bench/RESULTS.md, 2026-12-07 11:30). */
typedef struct {
    PyObject_HEAD
    PyObject *data;   /* the chunk the Mark was taken on (a str: its bytes are compared), or NULL */
    const unsigned char *bytes;
    Py_ssize_t len;
    Mark mark;
    PyObject *answer; /* that chunk's answer */
    int alone;        /* its choice is index 0 with nothing but the content (or null), the Mark's slot */
} Reader;

static void reader_forget(Reader *r) {
    Py_CLEAR(r->data);
    Py_CLEAR(r->answer);
    fields_clear(&r->mark.at);
}

static void reader_dealloc(Reader *r) {
    reader_forget(r);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

/* The chunk read from the Mark: the same bytes before its text value. */
static PyObject *read_marked(Reader *r, Cur *c) {
    const Mark *m = &r->mark;
    Fields f;
    fields_copy(&f, &m->at);
    c->p = c->start + m->off;
    PyObject **slot = slot_of(&f, m->slot);
    int rc = str_or_null(c, slot);
    if (rc < 0)
        return answer(rc, &f);
    Py_ssize_t rest = c->end - c->p;
    if (rest != r->len - m->tail || memcmp(c->p, r->bytes + m->tail, (size_t)rest) != 0) {
        rc = read_after(c, &f, m->depth);
        if (rc == 0 && content_alone(&f)) {
            PyObject *out = f.content;
            f.content = NULL;
            fields_clear(&f);
            return out;
        }
        return answer(rc, &f);
    }
    /* The same bytes after it too: the Mark's chunk's answer with this value. */
    if (r->alone && m->slot == SLOT_CONTENT && *slot != NULL) {
        PyObject *out = *slot;
        *slot = NULL;
        fields_clear(&f);
        return out;
    }
    PyObject *out = PyTuple_New(6);
    if (out != NULL) {
        for (int i = 0; i < 6; i++)
            PyTuple_SET_ITEM(out, i, Py_NewRef(PyTuple_GET_ITEM(r->answer, i)));
        PyObject *value = *slot != NULL ? *slot : Py_NewRef(Py_None);
        *slot = NULL; /* the tuple takes it */
        Py_SETREF(((PyTupleObject *)out)->ob_item[m->slot + 1], value);
    }
    fields_clear(&f);
    return out;
}

static PyObject *reader_read(Reader *r, PyObject *arg) {
    Cur c;
    int rc = str_arg(arg, "PlainReader.read(data: str)", &c);
    if (rc < 0)
        return rc == FAIL ? NULL : Py_NewRef(Py_None);
    Py_ssize_t n = c.end - c.start;
    if (r->data != NULL && n >= r->mark.off && memcmp(c.start, r->bytes, (size_t)r->mark.off) == 0)
        return read_marked(r, &c);
    Mark m = {.slot = -1};
    Fields f = {0};
    f.mark = &m;
    rc = read_chunk(&c, &f);
    int alone = rc == 0 && content_alone(&f), slot_alone = rc == 0 && content_slot_alone(&f);
    PyObject *out = answer(rc, &f);
    if (m.slot >= 0 && (out == NULL || out == Py_None))
        fields_clear(&m.at);
    if (out == NULL || out == Py_None)
        return out;
    if (m.slot >= 0) {
        reader_forget(r);
        r->data = Py_NewRef(arg);
        r->bytes = c.start;
        r->len = n;
        r->mark = m; /* takes its strings */
        r->answer = Py_NewRef(out);
        r->alone = slot_alone && m.slot == SLOT_CONTENT;
    }
    if (alone) {
        PyObject *content = Py_NewRef(PyTuple_GET_ITEM(out, 2));
        Py_DECREF(out);
        return content;
    }
    return out;
}

PyDoc_STRVAR(reader_read_doc, "read(data) -> plain_choice(data), for the chunks of one stream (see PlainReader); "
                                "where that is (0, None, content, None, None, None), content alone.");

static PyMethodDef reader_methods[] = {
    {"read", (PyCFunction)reader_read, METH_O, reader_read_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(reader_doc, "PlainReader()\n\nplain_choice for the chunks of one stream: `read(data)` gives the same "
                         "answer, reading again only what differs from the last chunk read whole.");

/* (No cyclic GC: a Reader holds strs and a tuple of strs and ints only.) */
static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "fastgw.policy.stream._chunkc.PlainReader",
    .tp_basicsize = sizeof(Reader),
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = reader_doc,
    .tp_methods = reader_methods,
    .tp_new = PyType_GenericNew,
};

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
    if (PyType_Ready(&ReaderType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&module);
    if (mod != NULL && PyModule_AddObjectRef(mod, "PlainReader", (PyObject *)&ReaderType) < 0)
        Py_CLEAR(mod);
    return mod;
}
