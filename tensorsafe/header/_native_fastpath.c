/*
 * The clean-file fast path of tensorsafe's safetensors validator, compiled: "this file has no
 * finding" (its size) or "don't know" (None). Written by hand for speed: on a small file the
 * Python fast path (fastpath.py) costs more than safetensors' whole safe_open, and almost all of
 * that is interpreter overhead per header, not per byte.
 *
 * It decides exactly the files the Python fast path decides, or fewer; never more. Every doubt
 * returns None and the caller goes on to the Python fast path, then to the full validator, which
 * also writes the findings. tests/test_validate_native.py checks, on generated and hostile files,
 * that a size comes back only when the full validator reports nothing.
 *
 * Safety: the parser reads only inside [s, s + len) of buffers it allocated and filled itself; all
 * integer arithmetic on file values is overflow-checked; the header length is checked against
 * the file size and the limits before anything is allocated. The GIL is released for the I/O and
 * the parse (they touch no Python object).
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>

#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LENGTH_BYTES 8
#define MAX_DTYPES 64
#define DTYPE_NAME_MAX 16

typedef struct {
    uint64_t header_warn_bytes, max_tensors, max_rank, max_dim, max_elements, max_name_bytes,
        max_metadata_entries, max_metadata_key_bytes, max_metadata_bytes, max_json_depth;
} Limits;

_Static_assert(sizeof(Limits) == 10 * sizeof(uint64_t), "Limits is read as an array");

static const char *const LIMIT_NAMES[] = {
    "header_warn_bytes", "max_tensors", "max_rank", "max_dim", "max_elements", "max_name_bytes",
    "max_metadata_entries", "max_metadata_key_bytes", "max_metadata_bytes", "max_json_depth",
};

typedef struct {
    char name[DTYPE_NAME_MAX];
    size_t len;
    unsigned bits;
    int left_to_python; /* ST-A03 dtypes: the full check decides them */
} Dtype;

/* Facts owned by the Python modules, handed over once by configure(). */
static struct {
    int ready;
    unsigned char cannot_start[256];
    unsigned char proto;
    size_t first_read;
    uint64_t max_header_bytes, writer_alignment, eocd_search, depth_with_tensors;
    Dtype dtypes[MAX_DTYPES];
    int n_dtypes;
} cfg;

typedef struct {
    const char *p;
    size_t len;
} Span;

/* -- parsing ---------------------------------------------------------------------------------- */
typedef struct {
    const char *p, *end;
} Cursor;

static int take(Cursor *c, const char *literal, size_t n) {
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, literal, n) != 0)
        return 0;
    c->p += n;
    return 1;
}
#define TAKE(c, lit) take((c), (lit), sizeof(lit) - 1)

/* A JSON string's content up to the closing quote (the caller has taken the opening one). The
 * whole header is printable ASCII without a backslash, so a quote always ends it. */
static int string_body(Cursor *c, Span *out) {
    const char *q = memchr(c->p, '"', (size_t)(c->end - c->p));
    if (q == NULL)
        return 0;
    out->p = c->p;
    out->len = (size_t)(q - c->p);
    c->p = q + 1;
    return 1;
}

/* The JSON integer grammar as the writer prints it: 0, or up to 19 digits without a leading zero
 * (every such number fits in 64 bits). Longer numbers are left to the full check. */
static int integer(Cursor *c, uint64_t *out) {
    const char *p = c->p;
    if (p >= c->end || *p < '0' || *p > '9')
        return 0;
    if (*p == '0') {
        if (p + 1 < c->end && p[1] >= '0' && p[1] <= '9')
            return 0;
        *out = 0;
        c->p = p + 1;
        return 1;
    }
    uint64_t v = 0;
    int digits = 0;
    while (p < c->end && *p >= '0' && *p <= '9') {
        if (++digits > 19)
            return 0;
        v = v * 10 + (uint64_t)(*p - '0');
        p++;
    }
    *out = v;
    c->p = p;
    return 1;
}

static int span_order(const void *a, const void *b) {
    const Span *x = a, *y = b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return memcmp(x->p, y->p, x->len);
}

static int all_unique(Span *spans, size_t n) {
    if (n < 2)
        return 1;
    qsort(spans, n, sizeof(Span), span_order);
    for (size_t i = 1; i < n; i++)
        if (span_order(&spans[i - 1], &spans[i]) == 0)
            return 0;
    return 1;
}

/* A growing array of spans (names or metadata keys) for the uniqueness check. */
typedef struct {
    Span *items;
    size_t n, cap;
} Spans;

static int push(Spans *s, Span v) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        Span *grown = realloc(s->items, cap * sizeof(Span));
        if (grown == NULL)
            return 0;
        s->items = grown;
        s->cap = cap;
    }
    s->items[s->n++] = v;
    return 1;
}

static int contains(Span s, const char *needle, size_t n) {
    return s.len >= n && memmem(s.p, s.len, needle, n) != NULL;
}

/* ST-P05 as the Python fast path checks it (stricter than the rule): not empty, no '/' at either
 * end, no '//', ':', '..' or '__metadata__', no longer than the limit. */
static int name_clean(Span s, const Limits *lim) {
    return s.len > 0 && s.len <= lim->max_name_bytes && s.p[0] != '/' && s.p[s.len - 1] != '/'
        && !contains(s, "//", 2) && memchr(s.p, ':', s.len) == NULL && !contains(s, "..", 2)
        && !contains(s, "__metadata__", 12);
}

static const Dtype *dtype_of(Span s) {
    for (int i = 0; i < cfg.n_dtypes; i++)
        if (cfg.dtypes[i].len == s.len && memcmp(cfg.dtypes[i].name, s.p, s.len) == 0)
            return &cfg.dtypes[i];
    return NULL;
}

/* '"__metadata__":{"k":"v",...},' after the root's '{': ST-F08 (unique keys) and ST-P06. */
static int metadata_clean(Cursor *c, const Limits *lim, Spans *keys) {
    if (TAKE(c, "}"))
        return TAKE(c, ",");
    uint64_t total = 0;
    for (;;) {
        Span key, value;
        if (!TAKE(c, "\"") || !string_body(c, &key) || !TAKE(c, ":\"") || !string_body(c, &value))
            return 0;
        if (key.len == 0 || key.len > lim->max_metadata_key_bytes || !push(keys, key))
            return 0;
        total += key.len + value.len; /* each below the header length: no overflow */
        if (TAKE(c, "},"))
            break;
        if (!TAKE(c, ","))
            return 0;
    }
    return keys->n <= lim->max_metadata_entries && total <= lim->max_metadata_bytes
        && all_unique(keys->items, keys->n);
}

/* '[d,...]': ST-F14, ST-F15, ST-P03, ST-P04; the byte size as the reference computes it. */
static int shape_bytes(Cursor *c, unsigned bits, const Limits *lim, uint64_t *nbytes) {
    uint64_t elements = 1, nonzero = 1, rank = 0;
    if (!TAKE(c, "]")) {
        for (;;) {
            uint64_t d;
            if (!integer(c, &d) || ++rank > lim->max_rank || d > lim->max_dim)
                return 0;
            if (__builtin_mul_overflow(elements, d, &elements))
                return 0;
            if (d && __builtin_mul_overflow(nonzero, d, &nonzero))
                return 0;
            if (TAKE(c, "]"))
                break;
            if (!TAKE(c, ","))
                return 0;
        }
    }
    uint64_t total;
    if (nonzero > lim->max_elements || __builtin_mul_overflow(elements, (uint64_t)bits, &total) || total % 8)
        return 0;
    *nbytes = total / 8;
    return 1;
}

/* One '"name":{"dtype":"..","shape":[..],"data_offsets":[b,e]}' whose data starts at *pos. */
static int entry_clean(Cursor *c, const Limits *lim, Spans *names, uint64_t *pos) {
    Span name, dtype_name;
    uint64_t nbytes, begin, end;
    if (!TAKE(c, "\"") || !string_body(c, &name) || !name_clean(name, lim) || !push(names, name))
        return 0;
    if (!TAKE(c, ":{\"dtype\":\"") || !string_body(c, &dtype_name))
        return 0;
    const Dtype *dtype = dtype_of(dtype_name);
    if (dtype == NULL || dtype->left_to_python)
        return 0;
    if (!TAKE(c, ",\"shape\":[") || !shape_bytes(c, dtype->bits, lim, &nbytes))
        return 0;
    if (!TAKE(c, ",\"data_offsets\":[") || !integer(c, &begin) || !TAKE(c, ",") || !integer(c, &end)
        || !TAKE(c, "]}"))
        return 0;
    /* ST-F13, F16, F17: back to back in text order, each as long as its dtype and shape say */
    uint64_t expected_end;
    if (begin != *pos || __builtin_add_overflow(begin, nbytes, &expected_end) || end != expected_end)
        return 0;
    unsigned align = dtype->bits / 8 ? dtype->bits / 8 : 1;
    if (nbytes && begin % align) /* ST-A02 exempts empty tensors */
        return 0;
    *pos = end;
    return 1;
}

static int header_clean_parts(Cursor *c, uint64_t data_size, const Limits *lim, Spans *names, Spans *keys) {
    if (!TAKE(c, "{"))
        return 0;
    if (TAKE(c, "\"__metadata__\":{") && !metadata_clean(c, lim, keys))
        return 0;
    uint64_t pos = 0;
    for (;;) {
        if (!entry_clean(c, lim, names, &pos))
            return 0;
        if (TAKE(c, "}"))
            break;
        if (!TAKE(c, ","))
            return 0;
    }
    return c->p == c->end && pos == data_size /* ST-F18 */
        && names->n <= lim->max_tensors && lim->max_json_depth >= cfg.depth_with_tensors
        && all_unique(names->items, names->n); /* ST-F08 */
}

/* Every format, policy and advisory rule passes on the header text s[0:len). */
static int header_clean(const char *s, size_t len, uint64_t data_size, const Limits *lim) {
    size_t end = len;
    while (end && s[end - 1] == ' ') /* ST-A01: only spaces may pad */
        end--;
    for (size_t i = 0; i < end; i++) { /* ST-F04 and the invisible-character rules: printable ASCII */
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch > 0x7e || ch == '\\')
            return 0;
    }
    Cursor c = {s, s + end};
    Spans names = {0}, keys = {0};
    int clean = header_clean_parts(&c, data_size, lim, &names, &keys);
    free(names.items);
    free(keys.items);
    return clean;
}

/* -- the file --------------------------------------------------------------------------------- */
static int read_exactly(int fd, char *buf, size_t n, uint64_t offset) {
    size_t done = 0;
    while (done < n) {
        ssize_t got = pread(fd, buf + done, n - done, (off_t)(offset + done));
        if (got <= 0)
            return 0;
        done += (size_t)got;
    }
    return 1;
}

static const char EOCD_MAGIC[4] = {'P', 'K', 5, 6};

/* The file's size when every header rule passes on it; minus the size when every rule passes but
 * the first bytes may start a pickle stream that the caller must walk (ST-P08); else 0 ("don't
 * know"). A file this is asked about has at least 11 bytes. */
static long long clean_size(const char *path, const Limits *lim) {
    long long result = 0;
    char *head = NULL, *header = NULL, *tail = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return 0;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < LENGTH_BYTES + 3)
        goto done;
    uint64_t size = (uint64_t)st.st_size;
    size_t head_len = size < cfg.first_read ? (size_t)size : cfg.first_read;
    head = malloc(head_len);
    if (head == NULL || !read_exactly(fd, head, head_len, 0))
        goto done;
    uint64_t n = 0;
    for (int i = LENGTH_BYTES - 1; i >= 0; i--)
        n = (n << 8) | (unsigned char)head[i];
    if (n > size - LENGTH_BYTES || n % cfg.writer_alignment || n > lim->header_warn_bytes
        || n > cfg.max_header_bytes) /* ST-F02, F03, A01 (length), P01 */
        goto done;
    unsigned char first = (unsigned char)head[0], third = (unsigned char)head[2];
    /* ST-P08: the front might walk as a pickle: the caller walks it (the scanner's walker) */
    int front_needs_a_walk = !cfg.cannot_start[first] && (first != cfg.proto || !cfg.cannot_start[third]);
    uint64_t end = LENGTH_BYTES + n;
    const char *text = head + LENGTH_BYTES;
    if (end > head_len) {
        header = malloc(n);
        if (header == NULL || !read_exactly(fd, header, n, LENGTH_BYTES))
            goto done;
        text = header;
    }
    const char *window = head;
    size_t window_len = head_len;
    if (size > cfg.first_read) { /* else the zip window (the last eocd_search bytes) is the whole file */
        uint64_t tail_start = size > cfg.eocd_search ? size - cfg.eocd_search : 0;
        window_len = (size_t)(size - tail_start);
        tail = malloc(window_len);
        if (tail == NULL || !read_exactly(fd, tail, window_len, tail_start))
            goto done;
        window = tail;
    }
    if (memmem(window, window_len, EOCD_MAGIC, sizeof EOCD_MAGIC) != NULL)
        goto done; /* ST-P08: a zip end record may end the file */
    if (header_clean(text, (size_t)n, size - end, lim))
        result = front_needs_a_walk ? -(long long)size : (long long)size;
done:
    free(head);
    free(header);
    free(tail);
    close(fd);
    return result;
}

/* -- Python ----------------------------------------------------------------------------------- */
/* The limits as unsigned 64-bit values (larger ones are clamped: no 64-bit quantity exceeds them). */
static int read_limits(PyObject *obj, Limits *out) {
    uint64_t *fields = (uint64_t *)out;
    for (size_t i = 0; i < sizeof LIMIT_NAMES / sizeof *LIMIT_NAMES; i++) {
        PyObject *v = PyObject_GetAttrString(obj, LIMIT_NAMES[i]);
        if (v == NULL || !PyLong_Check(v)) {
            Py_XDECREF(v);
            return 0;
        }
        int overflow = 0;
        long long signed_value = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow > 0) {
            fields[i] = UINT64_MAX;
        } else if (overflow < 0 || signed_value < 0) {
            Py_DECREF(v);
            return 0;
        } else {
            fields[i] = (uint64_t)signed_value;
        }
        Py_DECREF(v);
    }
    return !PyErr_Occurred();
}

static PyObject *py_clean_size(PyObject *self, PyObject *args) {
    PyObject *path_bytes = NULL, *limits_obj;
    Limits lim;
    if (!cfg.ready) {
        PyErr_SetString(PyExc_RuntimeError, "configure() has not been called");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O&O:clean_size", PyUnicode_FSConverter, &path_bytes, &limits_obj)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (!read_limits(limits_obj, &lim)) {
        PyErr_Clear();
        Py_DECREF(path_bytes);
        Py_RETURN_NONE;
    }
    const char *path = PyBytes_AS_STRING(path_bytes);
    long long size = 0;
    if (strlen(path) == (size_t)PyBytes_GET_SIZE(path_bytes)) { /* no NUL inside the path */
        Py_BEGIN_ALLOW_THREADS
        size = clean_size(path, &lim);
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(path_bytes);
    if (size == 0)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(size);
}

static PyObject *py_header_clean(PyObject *self, PyObject *args) {
    Py_buffer text;
    unsigned long long data_size;
    PyObject *limits_obj;
    Limits lim;
    if (!cfg.ready) {
        PyErr_SetString(PyExc_RuntimeError, "configure() has not been called");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*KO:header_clean", &text, &data_size, &limits_obj))
        return NULL;
    int ok = read_limits(limits_obj, &lim);
    if (!ok)
        PyErr_Clear();
    else
        ok = header_clean(text.buf, (size_t)text.len, data_size, &lim);
    PyBuffer_Release(&text);
    return PyBool_FromLong(ok);
}

static PyObject *py_configure(PyObject *self, PyObject *args) {
    Py_buffer cannot_start;
    PyObject *dtypes, *left_to_python;
    unsigned char proto;
    Py_ssize_t first_read;
    unsigned long long max_header_bytes, writer_alignment, eocd_search, depth;
    if (!PyArg_ParseTuple(args, "y*bnKKKKO!O:configure", &cannot_start, &proto, &first_read, &max_header_bytes,
                          &writer_alignment, &eocd_search, &depth, &PyDict_Type, &dtypes, &left_to_python))
        return NULL;
    cfg.ready = 0;
    if (cannot_start.len != 256 || first_read < LENGTH_BYTES + 3 || writer_alignment == 0) {
        PyBuffer_Release(&cannot_start);
        PyErr_SetString(PyExc_ValueError, "configure: a 256-byte table, a first read of at least 11 bytes "
                        "and a non-zero alignment are needed");
        return NULL;
    }
    memcpy(cfg.cannot_start, cannot_start.buf, 256);
    PyBuffer_Release(&cannot_start);
    PyObject *key, *value;
    Py_ssize_t i = 0;
    int n = 0;
    while (PyDict_Next(dtypes, &i, &key, &value)) {
        Py_ssize_t len;
        const char *name = PyUnicode_Check(key) ? PyUnicode_AsUTF8AndSize(key, &len) : NULL;
        long bits = PyLong_Check(value) ? PyLong_AsLong(value) : -1;
        if (name == NULL || len >= DTYPE_NAME_MAX || bits <= 0 || bits > 1024 || n == MAX_DTYPES) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "configure: dtypes must map short names to bit counts");
            cfg.ready = 0;
            return NULL;
        }
        int limited = PySequence_Contains(left_to_python, key);
        if (limited < 0)
            return NULL;
        memcpy(cfg.dtypes[n].name, name, (size_t)len);
        cfg.dtypes[n].len = (size_t)len;
        cfg.dtypes[n].bits = (unsigned)bits;
        cfg.dtypes[n].left_to_python = limited;
        n++;
    }
    cfg.n_dtypes = n;
    cfg.proto = proto;
    cfg.first_read = (size_t)first_read;
    cfg.max_header_bytes = max_header_bytes;
    cfg.writer_alignment = writer_alignment;
    cfg.eocd_search = eocd_search;
    cfg.depth_with_tensors = depth;
    cfg.ready = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", py_configure, METH_VARARGS,
     "configure(cannot_start, proto, first_read, max_header_bytes, writer_alignment, eocd_search, "
     "depth_with_tensors, dtype_bits, left_to_python): the facts the checks use, from the Python modules."},
    {"clean_size", py_clean_size, METH_VARARGS,
     "clean_size(path, limits) -> int | None: the file's size when every header rule passes; minus the size "
     "when they pass but the first bytes may start a pickle the caller must walk; else None."},
    {"header_clean", py_header_clean, METH_VARARGS,
     "header_clean(text: bytes, data_size, limits) -> bool: the header text alone passes every rule."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native_fastpath",
    "The clean-file fast path of the safetensors validator, compiled (see fastpath.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native_fastpath(void) { return PyModule_Create(&module); }
