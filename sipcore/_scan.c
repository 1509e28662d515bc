/*
 * sipcore._scan -- C accelerator for the header-scanning step of sipcore.message.parse_message.
 *
 * The pure-Python reference is sipcore/message.py: `_split_head`, the line splitting in
 * `parse_message`, `_scan_headers`, `_check_headers_py` and `SipMessage._to_bytes_py`.  This module must give exactly the same results (same start
 * line, same [key, name, value] lists, same body) and raise SipParseError with the same reason and
 * status for the same malformed input; tests/unit/test_scan_c.py checks it differentially.
 *
 * Functions:
 *   split(data: bytes) -> (start_line: str, head: str, body: bytes)
 *       `_split_head` + `bytes.decode("utf-8", "surrogateescape")` of the head + the start line
 *       (lines[0]).  Raises SipParseError("no end of headers").
 *   scan_headers(head: str, key_cache: dict, header_key: callable) -> list[list[str]]
 *       `_scan_headers(lines)` for the decoded head (the start line is skipped).  key_cache is
 *       message._KEY_CACHE; header_key is message.header_key, called only on cache misses, so the
 *       cache sees exactly the look-ups and insertions the Python path makes.
 *   scan(data, key_cache, header_key) -> (start_line, headers, body)
 *       Both steps in one call.  parse_message itself calls split() and scan_headers() separately
 *       because it validates the start line in between (a bad start line must win over a bad header,
 *       and must not populate the key cache).
 *   check_headers(headers, bits, single, lists) -> int
 *       `message._check_headers_py`: validate()'s walk over a message's [key, name, value] list
 *       (UTF-8 values, headers present at most once, no empty list element), the same flags word or
 *       the same SipParseError.
 *   serialize(start_line, headers, body) -> bytes | None
 *       `SipMessage._to_bytes_py` when every piece is an exact ASCII str (None otherwise: the caller
 *       falls back to the Python path).
 *
 * Line rules (equivalent to parse_message's): every "\n" ends a line and one "\r" immediately before
 * it is dropped; a lone "\r" elsewhere stays in the line; the text after the last "\n" is the last
 * line.  Splitting the decoded str at "\n" equals splitting the bytes, because "\r" and "\n" are
 * ASCII and surrogateescape/UTF-8 never produce or consume them inside a multi-byte sequence.
 *
 * This parses untrusted network input: no fixed-size buffers; every index stays inside
 * [0, length) of the object it reads; every error path releases what it owns.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

typedef struct {
    PyObject *SipParseError; /* sipcore.errors.SipParseError */
    PyObject *space;         /* " " */
} scan_state;

static inline scan_state *
get_state(PyObject *module)
{
    return (scan_state *)PyModule_GetState(module);
}

/* Characters allowed in a header name: _TOKEN_RE = ^[A-Za-z0-9\-.!%*_+`'~]+$ */
static unsigned char token_table[128];

static void
init_token_table(void)
{
    const char *extra = "-.!%*_+`'~";
    int c;
    memset(token_table, 0, sizeof(token_table));
    for (c = 'A'; c <= 'Z'; c++) token_table[c] = 1;
    for (c = 'a'; c <= 'z'; c++) token_table[c] = 1;
    for (c = '0'; c <= '9'; c++) token_table[c] = 1;
    for (; *extra; extra++) token_table[(unsigned char)*extra] = 1;
}

/* Raise SipParseError(reason) (status defaults to 400, as in the Python path).  Steals `reason`. */
static void
raise_parse_error(scan_state *st, PyObject *reason)
{
    PyObject *exc;
    if (reason == NULL) {
        return; /* the error building the reason is already set */
    }
    exc = PyObject_CallOneArg(st->SipParseError, reason);
    Py_DECREF(reason);
    if (exc == NULL) {
        return;
    }
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
}

/* First index of `ch` in str data [start, end), or -1. */
static Py_ssize_t
find_char(int kind, const void *data, Py_ssize_t start, Py_ssize_t end, Py_UCS4 ch)
{
    Py_ssize_t i;
    if (start >= end) {
        return -1;
    }
    if (kind == PyUnicode_1BYTE_KIND) {
        const Py_UCS1 *p = (const Py_UCS1 *)data;
        const Py_UCS1 *hit = memchr(p + start, (int)ch, (size_t)(end - start));
        return hit ? (Py_ssize_t)(hit - p) : -1;
    }
    for (i = start; i < end; i++) {
        if (PyUnicode_READ(kind, data, i) == ch) {
            return i;
        }
    }
    return -1;
}

/* head[a:b].strip() -- Python's str.strip() with no argument uses Py_UNICODE_ISSPACE. */
static PyObject *
strip_slice(PyObject *head, int kind, const void *data, Py_ssize_t a, Py_ssize_t b)
{
    while (a < b && Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, a))) {
        a++;
    }
    while (b > a && Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, b - 1))) {
        b--;
    }
    return PyUnicode_Substring(head, a, b);
}

/* Append [key, name, value] to out; steals the three references (even on failure). */
static int
append_header(PyObject *out, PyObject *key, PyObject *name, PyObject *value)
{
    PyObject *entry = PyList_New(3);
    int rc;
    if (entry == NULL) {
        Py_DECREF(key);
        Py_DECREF(name);
        Py_DECREF(value);
        return -1;
    }
    PyList_SET_ITEM(entry, 0, key);
    PyList_SET_ITEM(entry, 1, name);
    PyList_SET_ITEM(entry, 2, value);
    rc = PyList_Append(out, entry);
    Py_DECREF(entry);
    return rc;
}

/* key = key_cache.get(name): 1 and a new reference in *key when found, 0 when not, -1 on error. */
static int
cache_get(PyObject *kc, PyObject *name, PyObject **key)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyDict_GetItemRef(kc, name, key);
#else
    *key = PyDict_GetItemWithError(kc, name); /* borrowed: take a reference before anything else runs */
    if (*key != NULL) {
        Py_INCREF(*key);
        return 1;
    }
    return PyErr_Occurred() ? -1 : 0;
#endif
}

/* (a, b, c), stealing the three references (released on failure too). */
static PyObject *
tuple3(PyObject *a, PyObject *b, PyObject *c)
{
    PyObject *t = PyTuple_New(3);
    if (t == NULL) {
        Py_DECREF(a);
        Py_DECREF(b);
        Py_DECREF(c);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, a);
    PyTuple_SET_ITEM(t, 1, b);
    PyTuple_SET_ITEM(t, 2, c);
    return t;
}

/* out[-1][2] = (out[-1][2] + " " + stripped).strip().  out[-1][2] is always already stripped (built
 * by strip_slice or by an earlier unfold), and so is `stripped`, so the result is the non-empty
 * parts joined by one space.  Does not steal `stripped`. */
static int
unfold(PyObject *out, PyObject *stripped, PyObject *space)
{
    PyObject *last, *prev, *tmp, *joined;
    Py_ssize_t size = PyList_GET_SIZE(out);
    if (size <= 0) {
        PyErr_SetString(PyExc_SystemError, "_scan: unfold without a header");
        return -1;
    }
    last = PyList_GET_ITEM(out, size - 1); /* borrowed; built by append_header */
    if (!PyList_CheckExact(last) || PyList_GET_SIZE(last) != 3) {
        PyErr_SetString(PyExc_SystemError, "_scan: corrupt header entry");
        return -1;
    }
    if (PyUnicode_GET_LENGTH(stripped) == 0) {
        return 0; /* (prev + " ").strip() == prev */
    }
    prev = PyList_GET_ITEM(last, 2); /* borrowed; a str we built */
    if (PyUnicode_GET_LENGTH(prev) == 0) {
        Py_INCREF(stripped);
        return PyList_SetItem(last, 2, stripped); /* steals; releases prev */
    }
    tmp = PyUnicode_Concat(prev, space);
    if (tmp == NULL) {
        return -1;
    }
    joined = PyUnicode_Concat(tmp, stripped);
    Py_DECREF(tmp);
    if (joined == NULL) {
        return -1;
    }
    return PyList_SetItem(last, 2, joined); /* steals; releases prev */
}

/* Raise SipParseError(f"{prefix}{head[a:b]!r}"). */
static void
raise_with_repr(scan_state *st, const char *fmt, PyObject *head, Py_ssize_t a, Py_ssize_t b)
{
    PyObject *piece = PyUnicode_Substring(head, a, b);
    if (piece == NULL) {
        return;
    }
    raise_parse_error(st, PyUnicode_FromFormat(fmt, piece));
    Py_DECREF(piece);
}

/* _scan_headers(lines) for the decoded head; the first line (the start line) is skipped. */
static PyObject *
scan_headers_impl(scan_state *st, PyObject *head, PyObject *kc, PyObject *header_key)
{
    Py_ssize_t n, pos, nl;
    int kind;
    const void *data;
    PyObject *out, *name = NULL, *key = NULL, *value = NULL;

#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(head) < 0) {
        return NULL;
    }
#endif
    n = PyUnicode_GET_LENGTH(head);
    kind = PyUnicode_KIND(head);
    data = PyUnicode_DATA(head);

    out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    nl = find_char(kind, data, 0, n, '\n');
    if (nl < 0) {
        return out; /* only a start line */
    }
    pos = nl + 1;
    for (;;) {
        Py_ssize_t ls = pos, le, colon, name_end, ne, i;
        Py_UCS4 c;
        int last, found;

        nl = find_char(kind, data, pos, n, '\n');
        last = (nl < 0);
        le = last ? n : nl;
        if (!last && le > ls && PyUnicode_READ(kind, data, le - 1) == '\r') {
            le--; /* "\r\n" line end: the "\r" is not part of the line */
        }
        /* name, sep, value = line.partition(":") */
        colon = find_char(kind, data, ls, le, ':');
        name_end = (colon >= 0) ? colon : le;
        name = PyUnicode_Substring(head, ls, name_end);
        if (name == NULL) {
            goto error;
        }
        /* key = kc.get(name) */
        found = cache_get(kc, name, &key);
        if (found < 0) {
            goto error;
        }
        if (found) {
            value = strip_slice(head, kind, data, (colon >= 0) ? colon + 1 : le, le);
            if (value == NULL) {
                goto error;
            }
            if (append_header(out, key, name, value) < 0) {
                key = name = value = NULL; /* stolen */
                goto error;
            }
            key = name = value = NULL;
            goto next_line;
        }
        if (ls == le) { /* empty line */
            Py_CLEAR(name);
            goto next_line;
        }
        c = PyUnicode_READ(kind, data, ls);
        if (c == ' ' || c == '\t') { /* continuation (folded) line */
            Py_CLEAR(name);
            if (PyList_GET_SIZE(out) == 0) {
                raise_parse_error(st, PyUnicode_FromString("continuation line before any header"));
                goto error;
            }
            value = strip_slice(head, kind, data, ls, le);
            if (value == NULL || unfold(out, value, st->space) < 0) {
                goto error;
            }
            Py_CLEAR(value);
            goto next_line;
        }
        if (colon < 0) {
            Py_CLEAR(name);
            raise_with_repr(st, "bad header line: %R", head, ls, (le - ls > 60) ? ls + 60 : le);
            goto error;
        }
        /* if name[-1:] in (" ", "\t"): name = name.rstrip() */
        ne = name_end;
        if (ne > ls) {
            c = PyUnicode_READ(kind, data, ne - 1);
            if (c == ' ' || c == '\t') {
                while (ne > ls && Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, ne - 1))) {
                    ne--;
                }
                Py_DECREF(name);
                name = PyUnicode_Substring(head, ls, ne);
                if (name == NULL) {
                    goto error;
                }
            }
        }
        /* _TOKEN_RE.match(name) */
        for (i = ls; i < ne; i++) {
            c = PyUnicode_READ(kind, data, i);
            if (c >= 128 || !token_table[c]) {
                break;
            }
        }
        if (ne == ls || i < ne) {
            Py_CLEAR(name);
            raise_with_repr(st, "bad header name: %R", head, ls, (ne - ls > 60) ? ls + 60 : ne);
            goto error;
        }
        /* key = header_key(name): its own cache look-up first (no side effect on a hit) */
        if (ne != name_end && cache_get(kc, name, &key) < 0) {
            goto error;
        }
        if (key == NULL) {
            key = PyObject_CallOneArg(header_key, name);
            if (key == NULL) {
                goto error;
            }
        }
        value = strip_slice(head, kind, data, colon + 1, le);
        if (value == NULL) {
            goto error;
        }
        if (append_header(out, key, name, value) < 0) {
            key = name = value = NULL; /* stolen */
            goto error;
        }
        key = name = value = NULL;
    next_line:
        if (last) {
            break;
        }
        pos = nl + 1;
    }
    return out;

error:
    Py_XDECREF(name);
    Py_XDECREF(key);
    Py_XDECREF(value);
    Py_DECREF(out);
    return NULL;
}

/* First index of the 4 bytes "\r\n\r\n" in buf[0:len], or -1. */
static Py_ssize_t
find_crlfcrlf(const char *buf, Py_ssize_t len)
{
    Py_ssize_t p = 0, i;
    const char *hit;
    while (len - p >= 4) {
        /* candidates i in [p, len - 4] so that buf[i + 3] is in bounds */
        hit = memchr(buf + p, '\r', (size_t)(len - 3 - p));
        if (hit == NULL) {
            return -1;
        }
        i = hit - buf;
        if (buf[i + 1] == '\n' && buf[i + 2] == '\r' && buf[i + 3] == '\n') {
            return i;
        }
        p = i + 1;
    }
    return -1;
}

/* First index of the 2 bytes "\n\n" in buf[0:len], or -1. */
static Py_ssize_t
find_lflf(const char *buf, Py_ssize_t len)
{
    Py_ssize_t p = 0, i;
    const char *hit;
    while (len - p >= 2) {
        hit = memchr(buf + p, '\n', (size_t)(len - 1 - p));
        if (hit == NULL) {
            return -1;
        }
        i = hit - buf;
        if (buf[i + 1] == '\n') {
            return i;
        }
        p = i + 1;
    }
    return -1;
}

/* _split_head + head decode + lines[0].  New references in *start_out, *head_out, *body_out. */
static int
split_impl(scan_state *st, PyObject *data, PyObject **start_out, PyObject **head_out, PyObject **body_out)
{
    const char *buf = PyBytes_AS_STRING(data);
    Py_ssize_t len = PyBytes_GET_SIZE(data);
    Py_ssize_t head_len, body_off, n, nl, end;
    PyObject *head, *start, *body;
    int kind;
    const void *d;

    head_len = find_crlfcrlf(buf, len);
    if (head_len >= 0) {
        body_off = head_len + 4;
    }
    else if ((head_len = find_lflf(buf, len)) >= 0) {
        body_off = head_len + 2;
    }
    else if (len >= 2 && buf[len - 2] == '\r' && buf[len - 1] == '\n') {
        /* headers only, with a final CRLF, tolerated when there is no body */
        head_len = len - 2;
        body_off = len;
    }
    else {
        raise_parse_error(st, PyUnicode_FromString("no end of headers"));
        return -1;
    }

    head = PyUnicode_DecodeUTF8(buf, head_len, "surrogateescape");
    if (head == NULL) {
        return -1;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(head) < 0) {
        Py_DECREF(head);
        return -1;
    }
#endif
    n = PyUnicode_GET_LENGTH(head);
    kind = PyUnicode_KIND(head);
    d = PyUnicode_DATA(head);
    nl = find_char(kind, d, 0, n, '\n');
    if (nl < 0) {
        Py_INCREF(head);
        start = head;
    }
    else {
        end = nl;
        if (end > 0 && PyUnicode_READ(kind, d, end - 1) == '\r') {
            end--;
        }
        start = PyUnicode_Substring(head, 0, end);
        if (start == NULL) {
            Py_DECREF(head);
            return -1;
        }
    }
    body = PyBytes_FromStringAndSize(buf + body_off, len - body_off);
    if (body == NULL) {
        Py_DECREF(start);
        Py_DECREF(head);
        return -1;
    }
    *start_out = start;
    *head_out = head;
    *body_out = body;
    return 0;
}

static int
check_scan_args(PyObject *kc, PyObject *header_key)
{
    if (!PyDict_Check(kc)) {
        PyErr_SetString(PyExc_TypeError, "key_cache must be a dict");
        return -1;
    }
    if (!PyCallable_Check(header_key)) {
        PyErr_SetString(PyExc_TypeError, "header_key must be callable");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(split_doc,
"split(data: bytes) -> (start_line: str, head: str, body: bytes)\n\n"
"_split_head(data), the head decoded as UTF-8 with surrogateescape, and its first line.\n"
"Raises SipParseError('no end of headers').");

static PyObject *
scan_split(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *start, *head, *body;
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "split() takes exactly one argument");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "split() needs bytes, not %.100s", Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    if (split_impl(get_state(module), args[0], &start, &head, &body) < 0) {
        return NULL;
    }
    return tuple3(start, head, body);
}

PyDoc_STRVAR(scan_headers_doc,
"scan_headers(head: str, key_cache: dict, header_key) -> list[list[str]]\n\n"
"_scan_headers() over the lines of `head` (the start line is skipped).");

static PyObject *
scan_scan_headers(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "scan_headers() takes exactly three arguments");
        return NULL;
    }
    if (!PyUnicode_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "scan_headers() needs str, not %.100s", Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    if (check_scan_args(args[1], args[2]) < 0) {
        return NULL;
    }
    return scan_headers_impl(get_state(module), args[0], args[1], args[2]);
}

PyDoc_STRVAR(scan_doc,
"scan(data: bytes, key_cache: dict, header_key) -> (start_line: str, headers: list, body: bytes)\n\n"
"split() then scan_headers() in one call.");

static PyObject *
scan_scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *start, *head, *body, *headers;
    scan_state *st = get_state(module);
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "scan() takes exactly three arguments");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "scan() needs bytes, not %.100s", Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    if (check_scan_args(args[1], args[2]) < 0) {
        return NULL;
    }
    if (split_impl(st, args[0], &start, &head, &body) < 0) {
        return NULL;
    }
    headers = scan_headers_impl(st, head, args[1], args[2]);
    Py_DECREF(head);
    if (headers == NULL) {
        Py_DECREF(start);
        Py_DECREF(body);
        return NULL;
    }
    return tuple3(start, headers, body);
}

/* Whether a str holds a surrogate code point (what surrogateescape made of bytes that are not UTF-8:
 * value.encode("utf-8") fails exactly then). */
static int
has_surrogate(PyObject *s)
{
    Py_ssize_t i, n = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    if (PyUnicode_IS_ASCII(s) || kind == PyUnicode_1BYTE_KIND) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c >= 0xD800 && c <= 0xDFFF) {
            return 1;
        }
    }
    return 0;
}

/* Raise SipParseError(fmt % name), fmt having one %S. */
static void
raise_named(scan_state *st, const char *fmt, PyObject *name)
{
    raise_parse_error(st, PyUnicode_FromFormat(fmt, name));
}

/* Whether s[a:b].strip() is empty. */
static int
blank(int kind, const void *data, Py_ssize_t a, Py_ssize_t b)
{
    for (; a < b; a++) {
        if (!Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, a))) {
            return 0;
        }
    }
    return 1;
}

/* `any(not p.strip() for p in split_quoted(value, ","))` for a value holding a comma: 1 when an element
 * is empty, 0 when none is, -1 with SipParseError("unbalanced quotes") set (split_quoted raises before
 * yielding its last element). */
static int
empty_element(scan_state *st, PyObject *value)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(value), i, start = 0;
    int kind = PyUnicode_KIND(value);
    const void *data = PyUnicode_DATA(value);
    int in_q = 0, in_a = 0;
    for (i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (in_q) {
            if (c == '\\') {
                i++;
            }
            else if (c == '"') {
                in_q = 0;
            }
        }
        else if (c == '"') {
            in_q = 1;
        }
        else if (c == '<') {
            in_a = 1;
        }
        else if (c == '>') {
            in_a = 0;
        }
        else if (c == ',' && !in_a) {
            if (blank(kind, data, start, i)) {
                return 1;
            }
            start = i + 1;
        }
    }
    if (in_q) {
        raise_parse_error(st, PyUnicode_FromString("unbalanced quotes"));
        return -1;
    }
    return blank(kind, data, start < n ? start : n, n);
}

PyDoc_STRVAR(check_headers_doc,
"check_headers(headers: list[list[str]], bits: dict[str, int]) -> int\n\n"
"message._check_headers(headers, bits): validate()'s walk over the header list.");

static PyObject *
scan_check_headers(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    scan_state *st = get_state(module);
    PyObject *headers, *bits;
    Py_ssize_t i, n;
    long seen = 0, single, list_bits;
    int via_list = 0;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "check_headers() takes exactly four arguments");
        return NULL;
    }
    headers = args[0];
    bits = args[1];
    if (!PyList_Check(headers) || !PyDict_Check(bits)) {
        PyErr_SetString(PyExc_TypeError, "check_headers() needs a list and a dict");
        return NULL;
    }
    single = PyLong_AsLong(args[2]);
    list_bits = PyLong_AsLong(args[3]);
    if ((single == -1 || list_bits == -1) && PyErr_Occurred()) {
        return NULL;
    }
    n = PyList_GET_SIZE(headers);
    for (i = 0; i < n; i++) {
        PyObject *h = PyList_GET_ITEM(headers, i), *key, *name, *value, *bitobj;
        long bit;
        if (!PyList_Check(h) || PyList_GET_SIZE(h) < 3) {
            PyErr_SetString(PyExc_TypeError, "check_headers(): a header must be a [key, name, value] list");
            return NULL;
        }
        key = PyList_GET_ITEM(h, 0);
        name = PyList_GET_ITEM(h, 1);
        value = PyList_GET_ITEM(h, 2);
        if (!PyUnicode_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "check_headers(): a header value must be a str");
            return NULL;
        }
        if (has_surrogate(value)) {
            raise_named(st, "%S header is not valid UTF-8", name);
            return NULL;
        }
        bitobj = PyDict_GetItemWithError(bits, key); /* borrowed */
        if (bitobj == NULL) {
            if (PyErr_Occurred()) {
                return NULL;
            }
            continue;
        }
        bit = PyLong_AsLong(bitobj);
        if (bit == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (bit & seen) {
            if (bit & single) {
                raise_named(st, "more than one %S header", name);
                return NULL;
            }
            via_list = via_list || bit == 32;
        }
        seen |= bit;
        if (bit & list_bits) {
            if (PyUnicode_FindChar(value, ',', 0, PyUnicode_GET_LENGTH(value), 1) >= 0) {
                int e;
                via_list = via_list || bit == 32;
                e = empty_element(st, value);
                if (e < 0) {
                    return NULL;
                }
                if (e) {
                    raise_named(st, "empty %S value", name);
                    return NULL;
                }
            }
            else if (PyUnicode_GET_LENGTH(value) == 0) {
                raise_named(st, "empty %S value", name);
                return NULL;
            }
        }
    }
    return PyLong_FromLong(seen | (via_list ? 256 : 0));
}

/* An exact str whose characters are all ASCII: its bytes are its UTF-8 (and surrogateescape) encoding. */
static inline int
ascii_str(PyObject *s)
{
    return PyUnicode_CheckExact(s) && PyUnicode_IS_ASCII(s);
}

PyDoc_STRVAR(serialize_doc,
"serialize(start_line: str, headers: list[list[str]], body: bytes) -> bytes | None\n\n"
"SipMessage._to_bytes_py for the common case: start line, every header but Content-Length as\n"
"'name: value', 'Content-Length: len(body)', the body. None (the caller uses the Python path) when a\n"
"piece is not an exact ASCII str, a header is not a list of at least three items or the body is not\n"
"exactly bytes.");

static PyObject *
scan_serialize(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *start, *headers, *body, *out;
    Py_ssize_t i, n, total, blen;
    char clbuf[48], *w;
    int cllen;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "serialize() takes exactly three arguments");
        return NULL;
    }
    start = args[0];
    headers = args[1];
    body = args[2];
    if (!ascii_str(start) || !PyList_CheckExact(headers) || !PyBytes_CheckExact(body)) {
        Py_RETURN_NONE;
    }
    n = PyList_GET_SIZE(headers);
    blen = PyBytes_GET_SIZE(body);
    cllen = snprintf(clbuf, sizeof(clbuf), "Content-Length: %zd\r\n\r\n", blen);
    if (cllen < 0 || (size_t)cllen >= sizeof(clbuf)) {
        Py_RETURN_NONE;
    }
    total = PyUnicode_GET_LENGTH(start) + 2 + cllen + blen;
    for (i = 0; i < n; i++) {
        PyObject *h = PyList_GET_ITEM(headers, i), *key, *name, *value;
        if (!PyList_CheckExact(h) || PyList_GET_SIZE(h) < 3) {
            Py_RETURN_NONE;
        }
        key = PyList_GET_ITEM(h, 0);
        name = PyList_GET_ITEM(h, 1);
        value = PyList_GET_ITEM(h, 2);
        if (!PyUnicode_CheckExact(key)) {
            Py_RETURN_NONE;
        }
        if (PyUnicode_CompareWithASCIIString(key, "content-length") == 0) {
            continue;
        }
        if (!ascii_str(name) || !ascii_str(value)) {
            Py_RETURN_NONE;
        }
        total += PyUnicode_GET_LENGTH(name) + 2 + PyUnicode_GET_LENGTH(value) + 2;
    }
    out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) {
        return NULL;
    }
    w = PyBytes_AS_STRING(out);
#define PUT(src, len) do { memcpy(w, (src), (size_t)(len)); w += (len); } while (0)
    PUT(PyUnicode_DATA(start), PyUnicode_GET_LENGTH(start));
    PUT("\r\n", 2);
    for (i = 0; i < n; i++) {
        PyObject *h = PyList_GET_ITEM(headers, i), *name, *value;
        /* nothing ran since the first pass (no Python code, no release of the GIL): same list, same items */
        if (PyUnicode_CompareWithASCIIString(PyList_GET_ITEM(h, 0), "content-length") == 0) {
            continue;
        }
        name = PyList_GET_ITEM(h, 1);
        value = PyList_GET_ITEM(h, 2);
        PUT(PyUnicode_DATA(name), PyUnicode_GET_LENGTH(name));
        PUT(": ", 2);
        PUT(PyUnicode_DATA(value), PyUnicode_GET_LENGTH(value));
        PUT("\r\n", 2);
    }
    PUT(clbuf, cllen);
    PUT(PyBytes_AS_STRING(body), blen);
#undef PUT
    if (w - PyBytes_AS_STRING(out) != total) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_SystemError, "_scan.serialize: length mismatch");
        return NULL;
    }
    return out;
}

static PyMethodDef scan_methods[] = {
    {"serialize", (PyCFunction)(void (*)(void))scan_serialize, METH_FASTCALL, serialize_doc},
    {"check_headers", (PyCFunction)(void (*)(void))scan_check_headers, METH_FASTCALL, check_headers_doc},
    {"split", (PyCFunction)(void (*)(void))scan_split, METH_FASTCALL, split_doc},
    {"scan_headers", (PyCFunction)(void (*)(void))scan_scan_headers, METH_FASTCALL, scan_headers_doc},
    {"scan", (PyCFunction)(void (*)(void))scan_scan, METH_FASTCALL, scan_doc},
    {NULL, NULL, 0, NULL},
};

static int
scan_exec(PyObject *module)
{
    scan_state *st = get_state(module);
    PyObject *errors;

    init_token_table();
    errors = PyImport_ImportModule("sipcore.errors");
    if (errors == NULL) {
        return -1;
    }
    st->SipParseError = PyObject_GetAttrString(errors, "SipParseError");
    Py_DECREF(errors);
    if (st->SipParseError == NULL) {
        return -1;
    }
    st->space = PyUnicode_InternFromString(" ");
    if (st->space == NULL) {
        return -1;
    }
    return 0;
}

static int
scan_traverse(PyObject *module, visitproc visit, void *arg)
{
    scan_state *st = get_state(module);
    if (st != NULL) {
        Py_VISIT(st->SipParseError);
        Py_VISIT(st->space);
    }
    return 0;
}

static int
scan_clear(PyObject *module)
{
    scan_state *st = get_state(module);
    if (st != NULL) {
        Py_CLEAR(st->SipParseError);
        Py_CLEAR(st->space);
    }
    return 0;
}

static void
scan_free(void *module)
{
    scan_clear((PyObject *)module);
}

static PyModuleDef_Slot scan_slots[] = {
    {Py_mod_exec, scan_exec},
    {0, NULL},
};

static struct PyModuleDef scan_module = {
    PyModuleDef_HEAD_INIT,
    "sipcore._scan",
    "C accelerator for sipcore.message.parse_message's header scanning (pure-Python reference: "
    "sipcore.message._split_head / _scan_headers).",
    sizeof(scan_state),
    scan_methods,
    scan_slots,
    scan_traverse,
    scan_clear,
    scan_free,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModuleDef_Init(&scan_module);
}
