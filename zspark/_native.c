/* zspark._native: compiled hot paths. zspark/native.py says when they are used; each has a
 * pure-Python reference it is tested and fuzzed against (tests/test_native.py, tests/fuzz/).
 *
 * plain_bson_frames(frames, max_string_bytes, max_depth, max_fields[, fields]) -> list
 *
 *   For each ZeroMQ BSON frame, walks its bytes (no decoding to Python objects) and says whether
 *   it is an event that event.sender_fields keeps exactly as sent: a dict of its top-level string
 *   fields (type, level, topic, ...: what the topic policy may read) when it is, else None, and
 *   the frame goes down the pure-Python path, which accepts or rejects it with its reason. With
 *   `fields` false, True instead of the dict: the verdict alone, where no topic policy reads them.
 *
 *   So this function never rejects anything and never words a message: it only recognises the
 *   common case. It says yes only when every byte is what that path would accept as it is:
 *     - one whole BSON document (its size field is the frame's length), well formed throughout;
 *     - top-level keys among type, level, topic, env, version, referrer, user_agent (strings:
 *       ASCII without NUL, at most min(256, max_string_bytes) bytes), context (a document) and
 *       extra (any value but null), each at most once, and a non-empty type;
 *     - inside context and extra: keys ASCII without NUL, at most 256 bytes, not starting with
 *       '$'; values strings (ASCII without NUL, at most max_string_bytes), finite doubles, int32,
 *       int64, booleans, nulls, ObjectIds, binary of subtype 0, documents and arrays nested at
 *       most max_depth levels, at most max_fields values counting the root.
 *   Anything else (ip, cookies, timestamps, non-ASCII text, dates, other BSON types, a repeated
 *   top-level key, a limit reached) is left to Python.
 *
 * plain_events(raws, max_string_bytes, max_depth, max_fields) -> bytes
 *
 *   For each decoded event (from JSON: dicts, lists, str, int, float, bool, None), 1 if
 *   event.sender_fields returns it as it is (its fast path, event._plain, says yes without
 *   raising), else 0: the same rules as plain_bson_frames, on Python objects. A 0 sends that
 *   event down the Python path, which accepts it, converts it or rejects it with its reason.
 *
 * encode_spliced(fields, offset, head, stamp, tail, extra) -> list of bytes, or None
 *
 *   journal.codec.encode_batch's payloads for a batch of sender fields: each dict encoded as
 *   pymongo's encoder encodes it and spliced as splice does. None (the Python encoder decides,
 *   and raises what it raises) when any value is not of the types JSON decodes to (exactly dict
 *   with str keys, list, str, int within 64 bits, float, bool, None), a key holds a NUL, a
 *   string is not UTF-8-encodable, or nesting is deeper than DEPTH_CAP.
 *
 * splice(docs, offset, head, stamp, tail, extra) -> list of bytes
 *
 *   journal.codec._spliced of each document in `docs` (whole BSON documents, validated) at
 *   `offset`, `offset + 1`, ...: the payloads with the assigned fields spliced around the
 *   sender's elements. `head`, `stamp`, `tail`, `extra` are codec._assigned's four parts.
 *
 * frame_all(offset, payloads) -> bytes
 *
 *   journal.record.frame_all's records of `payloads` at `offset`, ..., joined: for each, magic
 *   "ZJ", length (uint32), offset (uint64), crc32 of length + offset + payload (uint32), all
 *   big-endian, then the payload.
 *
 * record_marks(data, position, spacing) -> list of (offset, position)
 *
 *   journal.record.marks: the first record of `data` (records back to back, as frame_all
 *   writes them, at file position `position`) and each one starting `spacing` bytes or more
 *   after the last one given: where the index notes them.
 *
 * parse_run(buf, pos, want, limit, max_records, max_bytes, position, next_note, spacing)
 *     -> (records, pos, notes, next_note)
 *
 *   journal.record.parse_run: the intact records back to back from buf[pos:], (offset, payload)
 *   for those with offsets from `want` up, stopping before the first record that is short,
 *   damaged (magic, length, crc) or at `limit` or beyond, or once max_records records or
 *   max_bytes payload bytes are taken; and the index's notes of them (where next_note >= 0).
 *   A reader's per-record loop in one call; what ends a run is left to the reader's Python.
 *
 * parse_head(head) -> tuple or None
 *
 *   httpframing.parse_head's Head, as the tuple (method, target, version, headers,
 *   content_length, chunked, persistent), for a request head (bytes up to and with its empty
 *   line) that follows every rule of httpframing's docstring in the common way: a request line
 *   of a token, a target and HTTP/1.0 or HTTP/1.1; at most 100 field lines of a token name, a
 *   colon and a value (OWS stripped); at most one Content-Length, of at most 18 digits (leading
 *   zeros dropped); no Transfer-Encoding; Connection options read for `persistent`. Anything
 *   else (every refusal, chunked, repeated or listed Content-Length, ...) is None: Python
 *   parses it and raises FramingError naming the rule broken.
 *
 * ndjson_frames(body, names) -> list of bytes or None
 *
 *   For each line of an NDJSON body (bytes) as httpingest._parse_ndjson takes it (split at "\n",
 *   " \t\r" stripped, empty lines skipped), the BSON document pymongo's encoder writes of the
 *   dict json.loads gives of it, with no dict built. None (Python decodes the lines and decides)
 *   unless every line is ours: a JSON object whose strings, keys included, decode to ASCII
 *   without NUL (escapes allowed); no key repeated within an object; at most 64 keys per object
 *   and 64 levels of nesting; integers within 64 bits, floats finite (Python's own
 *   conversion); at the top level no key "_id" and none of `names` (a tuple of bytes); and at
 *   least one line. The documents are the sender's fields as sent: validation is
 *   plain_bson_frames' job.
 *
 * json_fields(payloads, names[, times_before]) -> list of tuple or None
 *
 *   For each journal payload (bytes), the JSON the Kafka forwarder sends of it,
 *   codec.event_json_bytes(codec.decode_event(payload)), written straight from the BSON with no
 *   dict built, and the top-level fields `names` (a tuple of at most 8 str) asks for: the tuple
 *   (json, v1, ..., vk), vj the field's str (a BSON string), its int milliseconds since the epoch
 *   (a BSON UTC datetime), or None (no such field). None instead of the tuple (Python decodes
 *   the payload and decides) unless all of this holds: the payload is one BSON document whose
 *   size field is its length, well formed throughout (every length within its container, every
 *   document and array ending with its NUL exactly where its size says); no key repeated within
 *   a document and no "$ref" key (such a document decodes to a DBRef); nesting at most
 *   JSON_DEPTH_CAP levels counting the payload's own document; strings and keys strict UTF-8
 *   (as Python's decoder takes it); values only finite doubles, strings, documents, arrays,
 *   binary of subtype 0, ObjectIds, booleans of byte 0 or 1, datetimes in years 1..9999, nulls,
 *   int32 and int64; every field named a string or a datetime if present (only a string from the
 *   name at index `times_before` on). The JSON is json.dumps'
 *   (ensure_ascii=False, compact, codec.to_json_value for ObjectIds, bytes and datetimes), the
 *   bytes orjson writes where event_json_bytes uses it. Raises TypeError unless `payloads` is
 *   an iterable of bytes and `names` a tuple of str, ValueError for more than 8 names (a name
 *   no key can be, with a lone surrogate, is absent from every payload).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <zlib.h>

#define SHORT_LIMIT 256 /* event.SHORT_LIMIT */
/* Nesting the compiled code leaves to Python beyond (event.max_depth is at most this, config.py):
 * far below what would exhaust the C stack or Python's recursion limit while decoding. */
#define DEPTH_CAP 200

typedef struct {
    Py_ssize_t max_string;
    long max_depth;
    long max_fields;
} limits_t;

enum { F_TYPE, F_LEVEL, F_TOPIC, F_ENV, F_VERSION, F_REFERRER, F_USER_AGENT, N_STRING_FIELDS,
       F_CONTEXT = N_STRING_FIELDS, F_EXTRA, N_FIELDS };

static const char *FIELD_NAMES[N_FIELDS] = {"type", "level", "topic", "env", "version", "referrer",
                                            "user_agent", "context", "extra"};
static PyObject *field_objects[N_FIELDS]; /* interned str of FIELD_NAMES */

static int32_t read_i32(const unsigned char *p) {
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}

static double read_double(const unsigned char *p) {
    uint64_t bits = 0;
    for (int i = 7; i >= 0; i--)
        bits = bits << 8 | p[i];
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

/* ASCII without NUL: every byte in 1..127. */
static int plain_ascii(const unsigned char *s, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i] == 0 || s[i] >= 0x80)
            return 0;
    return 1;
}

/* The length of the C string at p, which must end before `end`; -1 if it does not. */
static Py_ssize_t cstring_length(const unsigned char *p, const unsigned char *end) {
    const unsigned char *nul = memchr(p, 0, (size_t)(end - p));
    return nul ? nul - p : -1;
}

/* A BSON string at p (int32 size, bytes, NUL) within end: its text in *s, *n; returns the bytes
 * it takes, or -1. */
static Py_ssize_t string_value(const unsigned char *p, const unsigned char *end,
                               const unsigned char **s, Py_ssize_t *n) {
    if (end - p < 5)
        return -1;
    int32_t size = read_i32(p);
    if (size < 1 || size > end - p - 4 || p[4 + size - 1] != 0)
        return -1;
    *s = p + 4;
    *n = size - 1;
    return 4 + (Py_ssize_t)size;
}

static Py_ssize_t free_value(unsigned char type, const unsigned char *p, const unsigned char *end,
                             long depth, const limits_t *lim, long *count);

/* A document or array at p within end, `depth` levels down: the bytes it takes, or -1. */
static Py_ssize_t container(const unsigned char *p, const unsigned char *end, int is_array,
                            long depth, const limits_t *lim, long *count) {
    if (depth > lim->max_depth || depth > DEPTH_CAP || end - p < 5)
        return -1;
    int32_t size = read_i32(p);
    if (size < 5 || size > end - p)
        return -1;
    const unsigned char *q = p + 4, *last = p + size - 1; /* last: the terminating NUL */
    if (*last != 0)
        return -1;
    while (q < last) {
        unsigned char type = *q++;
        Py_ssize_t key_length = cstring_length(q, last);
        if (key_length < 0)
            return -1;
        const unsigned char *key = q;
        q += key_length + 1;
        /* An array's keys are ignored by the decoder, but must still be text it can read. */
        if (!plain_ascii(key, key_length))
            return -1;
        if (!is_array && (key_length > SHORT_LIMIT || (key_length > 0 && key[0] == '$')))
            return -1;
        Py_ssize_t used = free_value(type, q, last, depth + 1, lim, count);
        if (used < 0)
            return -1;
        q += used;
    }
    return q == last ? (Py_ssize_t)size : -1;
}

/* A value of context or extra (event._value's rules) of BSON `type` at p within end: the bytes it
 * takes, or -1. `depth` is its own depth if it is a container. */
static Py_ssize_t free_value(unsigned char type, const unsigned char *p, const unsigned char *end,
                             long depth, const limits_t *lim, long *count) {
    if (++*count > lim->max_fields)
        return -1;
    const unsigned char *s;
    Py_ssize_t n, used;
    switch (type) {
    case 0x01: /* double */
        return end - p >= 8 && isfinite(read_double(p)) ? 8 : -1;
    case 0x02: /* string */
        used = string_value(p, end, &s, &n);
        return used >= 0 && n <= lim->max_string && plain_ascii(s, n) ? used : -1;
    case 0x03: /* document */
        return container(p, end, 0, depth, lim, count);
    case 0x04: /* array */
        return container(p, end, 1, depth, lim, count);
    case 0x05: /* binary: only subtype 0, which decodes to bytes */
        if (end - p < 5)
            return -1;
        n = read_i32(p);
        return n >= 0 && n <= end - p - 5 && p[4] == 0 ? 5 + n : -1;
    case 0x07: /* ObjectId */
        return end - p >= 12 ? 12 : -1;
    case 0x08: /* boolean */
        return end - p >= 1 && p[0] <= 1 ? 1 : -1;
    case 0x0A: /* null */
        return 0;
    case 0x10: /* int32 */
        return end - p >= 4 ? 4 : -1;
    case 0x12: /* int64 */
        return end - p >= 8 ? 8 : -1;
    default:
        return -1;
    }
}

static int field_of(const unsigned char *key, Py_ssize_t n) {
    for (int i = 0; i < N_FIELDS; i++)
        if ((Py_ssize_t)strlen(FIELD_NAMES[i]) == n && memcmp(FIELD_NAMES[i], key, (size_t)n) == 0)
            return i;
    return -1;
}

/* The string fields of the frame if it is plain (see the top), else Py_None; NULL on an error. */
static PyObject *plain_frame(const unsigned char *p, Py_ssize_t n, const limits_t *lim, int want_fields) {
    const unsigned char *text[N_STRING_FIELDS];
    Py_ssize_t length[N_STRING_FIELDS];
    int order[N_STRING_FIELDS], n_strings = 0;
    unsigned seen = 0;
    Py_ssize_t short_limit = lim->max_string < SHORT_LIMIT ? lim->max_string : SHORT_LIMIT;

    if (n < 5 || read_i32(p) != n || p[n - 1] != 0)
        Py_RETURN_NONE;
    const unsigned char *q = p + 4, *last = p + n - 1;
    while (q < last) {
        unsigned char type = *q++;
        Py_ssize_t key_length = cstring_length(q, last);
        if (key_length < 0)
            Py_RETURN_NONE;
        int field = field_of(q, key_length);
        q += key_length + 1;
        /* Once each: also what bounds `order` to N_STRING_FIELDS entries. */
        if (field < 0 || (seen & (1u << field)))
            Py_RETURN_NONE;
        seen |= 1u << field;
        Py_ssize_t used;
        if (field < N_STRING_FIELDS) {
            const unsigned char *s;
            Py_ssize_t len;
            if (type != 0x02)
                Py_RETURN_NONE;
            used = string_value(q, last, &s, &len);
            if (used < 0 || len > short_limit || !plain_ascii(s, len))
                Py_RETURN_NONE;
            text[field] = s;
            length[field] = len;
            order[n_strings++] = field;
        } else {
            long count = 0;
            if (type == 0x0A || (field == F_CONTEXT && type != 0x03))
                Py_RETURN_NONE;
            used = free_value(type, q, last, 1, lim, &count);
            if (used < 0)
                Py_RETURN_NONE;
        }
        q += used;
    }
    if (q != last || !(seen & (1u << F_TYPE)) || length[F_TYPE] == 0)
        Py_RETURN_NONE;
    if (!want_fields)
        Py_RETURN_TRUE;

    PyObject *fields = PyDict_New();
    if (fields == NULL)
        return NULL;
    for (int i = 0; i < n_strings; i++) {
        int field = order[i];
        PyObject *value = PyUnicode_New(length[field], 127);
        if (value == NULL) {
            Py_DECREF(fields);
            return NULL;
        }
        memcpy(PyUnicode_1BYTE_DATA(value), text[field], (size_t)length[field]);
        int failed = PyDict_SetItem(fields, field_objects[field], value);
        Py_DECREF(value);
        if (failed) {
            Py_DECREF(fields);
            return NULL;
        }
    }
    return fields;
}

static PyObject *plain_bson_frames(PyObject *self, PyObject *args) {
    PyObject *frames;
    limits_t lim;
    int want_fields = 1;
    if (!PyArg_ParseTuple(args, "Onll|p:plain_bson_frames", &frames, &lim.max_string, &lim.max_depth,
                          &lim.max_fields, &want_fields))
        return NULL;
    PyObject *seq = PySequence_Fast(frames, "frames must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyList_New(count);
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_buffer view;
        PyObject *result;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &view, PyBUF_SIMPLE) < 0) {
            Py_DECREF(seq);
            Py_DECREF(out);
            return NULL;
        }
        result = plain_frame(view.buf, view.len, &lim, want_fields);
        PyBuffer_Release(&view);
        if (result == NULL) {
            Py_DECREF(seq);
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, result);
    }
    Py_DECREF(seq);
    return out;
}

static void put_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16); p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}

static void put_be64(unsigned char *p, uint64_t v) {
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

static void put_le32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}

static uint64_t read_be64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static uint32_t read_be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* The payload of a whole document `doc` (`size` bytes) with the assigned fields spliced around
 * its elements (journal.codec._spliced): int32 size, head, the id's 5 offset bytes, stamp, the
 * document's elements, tail (which ends with the document's NUL). A new reference, or NULL. */
typedef struct {
    Py_buffer head, stamp, tail;
    Py_ssize_t extra;
} assigned_t;

static PyObject *spliced_payload(const unsigned char *doc, Py_ssize_t size, uint64_t offset, const assigned_t *a) {
    Py_ssize_t length = 4 + a->head.len + 5 + a->stamp.len + (size - 5) + a->tail.len;
    PyObject *payload = PyBytes_FromStringAndSize(NULL, length);
    if (payload == NULL)
        return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(payload);
    put_le32(p, (uint32_t)(size + a->extra));
    p += 4;
    memcpy(p, a->head.buf, (size_t)a->head.len);
    p += a->head.len;
    uint64_t id_offset = offset & 0xFFFFFFFFFFULL;
    for (int b = 4; b >= 0; b--)
        *p++ = (unsigned char)(id_offset >> (8 * b));
    memcpy(p, a->stamp.buf, (size_t)a->stamp.len);
    p += a->stamp.len;
    memcpy(p, doc + 4, (size_t)(size - 5));
    p += size - 5;
    memcpy(p, a->tail.buf, (size_t)a->tail.len);
    return payload;
}

static void release_assigned(assigned_t *a) {
    PyBuffer_Release(&a->head);
    PyBuffer_Release(&a->stamp);
    PyBuffer_Release(&a->tail);
}

/* -- decoded JSON events: the plain check and the encoder ------------------------------------- */

/* ASCII without NUL, at most `limit` characters (event._plain's test of a string). */
static int plain_str(PyObject *o, Py_ssize_t limit) {
    if (!PyUnicode_IS_ASCII(o))
        return 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(o);
    return n <= limit && memchr(PyUnicode_1BYTE_DATA(o), 0, (size_t)n) == NULL;
}

/* event._value's verdict on a free-form value, when it accepts without a call to the slow
 * checks: 1, else 0 (the Python code decides). `depth` is the value's own. */
static int plain_object(PyObject *o, long depth, const limits_t *lim, long *count) {
    if (++*count > lim->max_fields)
        return 0;
    if (o == Py_None || PyBool_Check(o))
        return 1;
    if (PyUnicode_CheckExact(o))
        return plain_str(o, lim->max_string);
    if (PyLong_CheckExact(o)) {
        int overflow; /* an exact int: no error, only an overflow */
        PyLong_AsLongLongAndOverflow(o, &overflow);
        return !overflow;
    }
    if (PyFloat_CheckExact(o))
        return isfinite(PyFloat_AS_DOUBLE(o));
    if (PyDict_CheckExact(o)) {
        if (depth > lim->max_depth || depth > DEPTH_CAP)
            return 0;
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (PyDict_Next(o, &pos, &key, &value)) {
            if (!PyUnicode_CheckExact(key) || !plain_str(key, SHORT_LIMIT) ||
                (PyUnicode_GET_LENGTH(key) > 0 && PyUnicode_1BYTE_DATA(key)[0] == '$'))
                return 0;
            if (!plain_object(value, depth + 1, lim, count))
                return 0;
        }
        return 1;
    }
    if (PyList_CheckExact(o)) {
        if (depth > lim->max_depth || depth > DEPTH_CAP)
            return 0;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(o); i++)
            if (!plain_object(PyList_GET_ITEM(o, i), depth + 1, lim, count))
                return 0;
        return 1;
    }
    return 0;
}

static int plain_event(PyObject *raw, const limits_t *lim) {
    if (!PyDict_CheckExact(raw))
        return 0;
    Py_ssize_t short_limit = lim->max_string < SHORT_LIMIT ? lim->max_string : SHORT_LIMIT;
    PyObject *key, *value, *type = NULL;
    Py_ssize_t pos = 0;
    while (PyDict_Next(raw, &pos, &key, &value)) {
        int field = -1;
        for (int i = 0; i < N_FIELDS && field < 0; i++)
            if (key == field_objects[i] ||
                (PyUnicode_CheckExact(key) && PyUnicode_Compare(key, field_objects[i]) == 0))
                field = i;
        if (field < 0)
            return 0;
        if (field < N_STRING_FIELDS) {
            if (!PyUnicode_CheckExact(value) || !plain_str(value, short_limit))
                return 0;
            if (field == F_TYPE)
                type = value;
        } else {
            long count = 0;
            if (value == Py_None || (field == F_CONTEXT && !PyDict_CheckExact(value)))
                return 0;
            if (!plain_object(value, 1, lim, &count))
                return 0;
        }
    }
    return type != NULL && PyUnicode_GET_LENGTH(type) > 0;
}

static PyObject *plain_events(PyObject *self, PyObject *args) {
    PyObject *raws;
    limits_t lim;
    if (!PyArg_ParseTuple(args, "Onll:plain_events", &raws, &lim.max_string, &lim.max_depth, &lim.max_fields))
        return NULL;
    PyObject *seq = PySequence_Fast(raws, "raws must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyBytes_FromStringAndSize(NULL, count);
    if (out != NULL) {
        char *flags = PyBytes_AS_STRING(out);
        for (Py_ssize_t i = 0; i < count; i++)
            flags[i] = (char)plain_event(PySequence_Fast_GET_ITEM(seq, i), &lim);
    }
    Py_DECREF(seq);
    return out;
}

typedef struct {
    unsigned char *data;
    Py_ssize_t len, cap;
} buffer_t;

static int grow(buffer_t *b, Py_ssize_t more) {
    if (b->len + more <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + more)
        cap *= 2;
    unsigned char *data = PyMem_Realloc(b->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int put(buffer_t *b, const void *p, Py_ssize_t n) {
    if (grow(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, p, (size_t)n);
    b->len += n;
    return 0;
}

static int put_i32(buffer_t *b, int32_t v) {
    unsigned char le[4];
    put_le32(le, (uint32_t)v);
    return put(b, le, 4);
}

/* Results of the encoder: written; not ours to encode (the Python encoder decides); an error
 * (memory) with an exception set. */
enum { ENCODED = 0, NOT_OURS = 1, FAILED = -1 };

static int encode_document(buffer_t *b, PyObject *o, int is_array, long depth);

static int encode_element(buffer_t *b, const char *key, Py_ssize_t key_len, PyObject *v, long depth) {
    unsigned char type;
    Py_ssize_t type_at = b->len;
    if (put(b, "\0", 1) < 0 || put(b, key, key_len) < 0 || put(b, "\0", 1) < 0)
        return FAILED;
    if (v == Py_None) {
        type = 0x0A;
    } else if (PyBool_Check(v)) {
        type = 0x08;
        if (put(b, v == Py_True ? "\1" : "\0", 1) < 0)
            return FAILED;
    } else if (PyLong_CheckExact(v)) {
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow)
            return NOT_OURS;
        if (n == -1 && PyErr_Occurred())
            return FAILED;
        unsigned char le[8];
        if (n >= INT32_MIN && n <= INT32_MAX) {
            type = 0x10;
            put_le32(le, (uint32_t)(int32_t)n);
            if (put(b, le, 4) < 0)
                return FAILED;
        } else {
            type = 0x12;
            uint64_t u = (uint64_t)n;
            for (int i = 0; i < 8; i++)
                le[i] = (unsigned char)(u >> (8 * i));
            if (put(b, le, 8) < 0)
                return FAILED;
        }
    } else if (PyFloat_CheckExact(v)) {
        type = 0x01;
        double d = PyFloat_AS_DOUBLE(v);
        uint64_t u;
        memcpy(&u, &d, 8);
        unsigned char le[8];
        for (int i = 0; i < 8; i++)
            le[i] = (unsigned char)(u >> (8 * i));
        if (put(b, le, 8) < 0)
            return FAILED;
    } else if (PyUnicode_CheckExact(v)) {
        type = 0x02;
        Py_ssize_t n;
        const char *utf8 = PyUnicode_AsUTF8AndSize(v, &n);
        if (utf8 == NULL) {
            PyErr_Clear(); /* a lone surrogate: the Python encoder says so */
            return NOT_OURS;
        }
        if (n + 1 > INT32_MAX)
            return NOT_OURS;
        if (put_i32(b, (int32_t)(n + 1)) < 0 || put(b, utf8, n) < 0 || put(b, "\0", 1) < 0)
            return FAILED;
    } else if (PyDict_CheckExact(v) || PyList_CheckExact(v)) {
        int is_array = PyList_CheckExact(v);
        type = is_array ? 0x04 : 0x03;
        int r = encode_document(b, v, is_array, depth + 1);
        if (r != ENCODED)
            return r;
    } else {
        return NOT_OURS;
    }
    b->data[type_at] = type;
    return ENCODED;
}

/* A document (or array) of `o`: int32 size, elements, NUL. */
static int encode_document(buffer_t *b, PyObject *o, int is_array, long depth) {
    if (depth > DEPTH_CAP)
        return NOT_OURS;
    Py_ssize_t start = b->len;
    if (put_i32(b, 0) < 0)
        return FAILED;
    if (is_array) {
        char key[24];
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(o); i++) {
            int n = snprintf(key, sizeof key, "%zd", i);
            int r = encode_element(b, key, n, PyList_GET_ITEM(o, i), depth);
            if (r != ENCODED)
                return r;
        }
    } else {
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (PyDict_Next(o, &pos, &key, &value)) {
            Py_ssize_t n;
            const char *name = PyUnicode_CheckExact(key) ? PyUnicode_AsUTF8AndSize(key, &n) : NULL;
            if (name == NULL) {
                PyErr_Clear();
                return NOT_OURS;
            }
            if (memchr(name, 0, (size_t)n) != NULL)
                return NOT_OURS; /* the Python encoder refuses it, saying why */
            int r = encode_element(b, name, n, value, depth);
            if (r != ENCODED)
                return r;
        }
    }
    if (put(b, "\0", 1) < 0)
        return FAILED;
    if (b->len - start > INT32_MAX)
        return NOT_OURS;
    put_le32(b->data + start, (uint32_t)(b->len - start));
    return ENCODED;
}

static PyObject *encode_spliced(PyObject *self, PyObject *args) {
    PyObject *fields;
    unsigned long long offset;
    assigned_t a;
    if (!PyArg_ParseTuple(args, "OKy*y*y*n:encode_spliced", &fields, &offset, &a.head, &a.stamp, &a.tail, &a.extra))
        return NULL;
    buffer_t b = {NULL, 0, 0};
    PyObject *out = NULL, *seq = PySequence_Fast(fields, "fields must be a sequence");
    if (seq == NULL)
        goto done;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if ((out = PyList_New(count)) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *doc = PySequence_Fast_GET_ITEM(seq, i);
        /* The document alone first, then the payload around its elements. */
        b.len = 0;
        int r = PyDict_CheckExact(doc) ? encode_document(&b, doc, 0, 1) : NOT_OURS;
        if (r != ENCODED) {
            Py_CLEAR(out);
            if (r == NOT_OURS)
                out = Py_NewRef(Py_None);
            goto done;
        }
        PyObject *payload = spliced_payload(b.data, b.len, offset + (uint64_t)i, &a);
        if (payload == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, payload);
    }
done:
    PyMem_Free(b.data);
    Py_XDECREF(seq);
    release_assigned(&a);
    return out;
}

/* -- the journal: splicing and framing records ---------------------------------------------- */

static PyObject *splice(PyObject *self, PyObject *args) {
    PyObject *docs;
    unsigned long long offset;
    assigned_t a;
    if (!PyArg_ParseTuple(args, "OKy*y*y*n:splice", &docs, &offset, &a.head, &a.stamp, &a.tail, &a.extra))
        return NULL;
    PyObject *out = NULL, *seq = PySequence_Fast(docs, "docs must be a sequence");
    if (seq == NULL)
        goto done;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if ((out = PyList_New(count)) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_buffer doc;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &doc, PyBUF_SIMPLE) < 0)
            goto fail;
        int32_t size = doc.len >= 5 ? read_i32(doc.buf) : 0;
        PyObject *payload = NULL;
        if (size < 5 || size > doc.len)
            PyErr_Format(PyExc_ValueError, "document %zd: its size field does not fit its %zd bytes", i, doc.len);
        else
            payload = spliced_payload(doc.buf, size, offset + (uint64_t)i, &a);
        PyBuffer_Release(&doc);
        if (payload == NULL)
            goto fail;
        PyList_SET_ITEM(out, i, payload);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    Py_XDECREF(seq);
    release_assigned(&a);
    return out;
}

#define RECORD_HEADER 18

static PyObject *frame_all(PyObject *self, PyObject *args) {
    unsigned long long offset;
    PyObject *payloads;
    if (!PyArg_ParseTuple(args, "KO:frame_all", &offset, &payloads))
        return NULL;
    PyObject *seq = PySequence_Fast(payloads, "payloads must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq), total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(item)) {
            Py_DECREF(seq);
            return PyErr_Format(PyExc_TypeError, "payload %zd is %.50s, not bytes", i, Py_TYPE(item)->tp_name);
        }
        if (PyBytes_GET_SIZE(item) > 0xFFFFFFFFLL) {
            Py_DECREF(seq);
            return PyErr_Format(PyExc_ValueError, "payload %zd is too large for a record", i);
        }
        total += RECORD_HEADER + PyBytes_GET_SIZE(item);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        Py_ssize_t n = PyBytes_GET_SIZE(item);
        p[0] = 'Z';
        p[1] = 'J';
        put_be32(p + 2, (uint32_t)n);
        put_be64(p + 6, offset + (uint64_t)i);
        uLong crc = crc32(0L, p + 2, 12);
        crc = crc32(crc, (const Bytef *)PyBytes_AS_STRING(item), (uInt)n);
        put_be32(p + 14, (uint32_t)crc);
        memcpy(p + RECORD_HEADER, PyBytes_AS_STRING(item), (size_t)n);
        p += RECORD_HEADER + n;
    }
    Py_DECREF(seq);
    return out;
}

static PyObject *record_marks(PyObject *self, PyObject *args) {
    Py_buffer data;
    long long position, spacing;
    if (!PyArg_ParseTuple(args, "y*LL:record_marks", &data, &position, &spacing))
        return NULL;
    PyObject *out = PyList_New(0);
    const unsigned char *p = data.buf;
    Py_ssize_t at = 0;
    long long due = position;
    while (out != NULL && data.len - at >= RECORD_HEADER) {
        if (position + at >= due) {
            PyObject *mark = Py_BuildValue("(KL)", (unsigned long long)read_be64(p + at + 6), position + at);
            if (mark == NULL || PyList_Append(out, mark) < 0)
                Py_CLEAR(out);
            Py_XDECREF(mark);
            due = position + at + spacing;
        }
        at += RECORD_HEADER + (Py_ssize_t)read_be32(p + at + 2);
    }
    PyBuffer_Release(&data);
    return out;
}

/* -- parse_run: the intact records of a reader's buffer, a run at a time -------------------- */

#define RECORD_MAX_BYTES (256u * 1024u * 1024u) /* journal.record.MAX_RECORD_BYTES */

/* An offset argument: a negative one is 0 (no record's offset is below either), one beyond a
 * uint64 an OverflowError. */
static int offset_arg(PyObject *obj, void *out) {
    int overflow;
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "an offset must be an int, not %.50s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    long long small = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (small == -1 && PyErr_Occurred())
        return 0;
    if (overflow < 0 || (overflow == 0 && small < 0)) {
        *(unsigned long long *)out = 0;
        return 1;
    }
    unsigned long long value = PyLong_AsUnsignedLongLong(obj);
    if (value == (unsigned long long)-1 && PyErr_Occurred())
        return 0;
    *(unsigned long long *)out = value;
    return 1;
}

static PyObject *parse_run(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t pos, max_records, max_bytes;
    unsigned long long want, limit;
    long long position, next_note, spacing;
    if (!PyArg_ParseTuple(args, "y*nO&O&nnLLL:parse_run", &buf, &pos, offset_arg, &want, offset_arg, &limit,
                          &max_records, &max_bytes, &position, &next_note, &spacing))
        return NULL;
    PyObject *records = PyList_New(0), *notes = PyList_New(0), *result = NULL;
    if (records == NULL || notes == NULL)
        goto done;
    if (pos < 0 || pos > buf.len) {
        PyErr_SetString(PyExc_ValueError, "pos is outside the buffer");
        goto done;
    }
    const unsigned char *p = buf.buf;
    Py_ssize_t taken = 0, size = 0;
    while (taken < max_records && size < max_bytes && buf.len - pos >= RECORD_HEADER) {
        const unsigned char *h = p + pos;
        if (h[0] != 'Z' || h[1] != 'J')
            break;
        uint32_t length = read_be32(h + 2);
        if (length > RECORD_MAX_BYTES || (Py_ssize_t)length > buf.len - pos - RECORD_HEADER)
            break;
        uint64_t offset = read_be64(h + 6);
        uLong crc = crc32(0L, h + 2, 12);
        crc = crc32(crc, h + RECORD_HEADER, (uInt)length);
        if ((uint32_t)crc != read_be32(h + 14) || offset >= limit)
            break;
        if (next_note >= 0 && next_note <= position + pos) {
            PyObject *note = Py_BuildValue("(KL)", (unsigned long long)offset, position + pos);
            if (note == NULL || PyList_Append(notes, note) < 0) {
                Py_XDECREF(note);
                goto done;
            }
            Py_DECREF(note);
            next_note = position + pos + spacing;
        }
        if (offset >= want) {
            PyObject *rec = Py_BuildValue("(Ky#)", (unsigned long long)offset,
                                          (const char *)h + RECORD_HEADER, (Py_ssize_t)length);
            if (rec == NULL || PyList_Append(records, rec) < 0) {
                Py_XDECREF(rec);
                goto done;
            }
            Py_DECREF(rec);
            taken++;
            size += length;
            want = offset + 1;
        }
        pos += RECORD_HEADER + (Py_ssize_t)length;
    }
    result = Py_BuildValue("(OnOL)", records, pos, notes, next_note);
done:
    Py_XDECREF(records);
    Py_XDECREF(notes);
    PyBuffer_Release(&buf);
    return result;
}

/* -- parse_head: the common HTTP request head (httpframing.parse_head's fast path) ------------ */

#define HEAD_MAX_BYTES (64 * 1024) /* httpframing.MAX_HEAD_BYTES */
#define HEAD_MAX_FIELDS 100        /* httpframing.MAX_HEADERS */
#define HEAD_MAX_LENGTH_DIGITS 18  /* a Content-Length of more digits is left to Python */

/* RFC 9110 tchar, as httpframing._TOKEN. */
static unsigned char head_token[256];
/* A field value's bytes, as httpframing._FIELD_LINE: HTAB, SP, visible, obs-text. */
static unsigned char head_value[256];
static PyObject *head_http10, *head_http11, *head_content_length;

static void head_tables(void) {
    const char *extra = "!#$%&'*+.^_`|~-";
    for (int c = '0'; c <= '9'; c++)
        head_token[c] = 1;
    for (int c = 'A'; c <= 'Z'; c++)
        head_token[c] = head_token[c + 32] = 1;
    for (const char *e = extra; *e; e++)
        head_token[(unsigned char)*e] = 1;
    head_value['\t'] = 1;
    for (int c = 0x20; c < 0x100; c++)
        head_value[c] = c != 0x7f;
}

/* `s` (n bytes) equals the lower-case ASCII `name`, in any case. */
static int head_name_is(const unsigned char *s, Py_ssize_t n, const char *name) {
    Py_ssize_t len = (Py_ssize_t)strlen(name);
    if (n != len)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c += 32;
        if (c != (unsigned char)name[i])
            return 0;
    }
    return 1;
}

/* Note the options of a Connection value (comma-separated, OWS around each) in *close and
 * *keep_alive. */
static void head_connection(const unsigned char *s, Py_ssize_t n, int *close, int *keep_alive) {
    Py_ssize_t at = 0;
    while (at <= n) {
        Py_ssize_t end = at;
        while (end < n && s[end] != ',')
            end++;
        Py_ssize_t a = at, b = end;
        while (a < b && (s[a] == ' ' || s[a] == '\t'))
            a++;
        while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t'))
            b--;
        if (head_name_is(s + a, b - a, "close"))
            *close = 1;
        else if (head_name_is(s + a, b - a, "keep-alive"))
            *keep_alive = 1;
        at = end + 1;
    }
}

static PyObject *parse_head(PyObject *self, PyObject *arg) {
    if (!PyBytes_Check(arg))
        Py_RETURN_NONE;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t n = PyBytes_GET_SIZE(arg), at = 0;
    if (n > HEAD_MAX_BYTES || n < 4 || memcmp(p + n - 4, "\r\n\r\n", 4) != 0)
        Py_RETURN_NONE;
    /* request-line = method SP request-target SP HTTP-version CRLF */
    while (at < n && head_token[p[at]])
        at++;
    Py_ssize_t method_end = at;
    if (method_end == 0 || at >= n || p[at] != ' ')
        Py_RETURN_NONE;
    Py_ssize_t target_start = ++at;
    while (at < n && p[at] > 0x20 && p[at] != 0x7f)
        at++;
    Py_ssize_t target_end = at;
    if (target_end == target_start || n - at < 11 || memcmp(p + at, " HTTP/1.", 8) != 0 ||
        (p[at + 8] != '0' && p[at + 8] != '1') || p[at + 9] != '\r' || p[at + 10] != '\n')
        Py_RETURN_NONE;
    int http11 = p[at + 8] == '1';
    at += 11;
    /* The field lines: where each name and (stripped) value is. */
    Py_ssize_t spans[HEAD_MAX_FIELDS][4];
    int count = 0, length_at = -1, close = 0, keep_alive = 0;
    long long length = 0;
    while (1) {
        if (at + 2 > n)
            Py_RETURN_NONE;
        if (p[at] == '\r' && p[at + 1] == '\n') { /* the empty line: the end, and only there */
            if (at + 2 != n)
                Py_RETURN_NONE;
            break;
        }
        if (count == HEAD_MAX_FIELDS)
            Py_RETURN_NONE;
        Py_ssize_t name = at;
        while (at < n && head_token[p[at]])
            at++;
        if (at == name || at >= n || p[at] != ':')
            Py_RETURN_NONE;
        Py_ssize_t name_end = at++;
        while (at < n && (p[at] == ' ' || p[at] == '\t'))
            at++;
        Py_ssize_t value = at;
        while (at < n && head_value[p[at]])
            at++;
        if (n - at < 2 || p[at] != '\r' || p[at + 1] != '\n')
            Py_RETURN_NONE;
        Py_ssize_t value_end = at;
        while (value_end > value && (p[value_end - 1] == ' ' || p[value_end - 1] == '\t'))
            value_end--;
        at += 2;
        const unsigned char *nm = p + name;
        Py_ssize_t nlen = name_end - name;
        if (head_name_is(nm, nlen, "transfer-encoding"))
            Py_RETURN_NONE; /* chunked, or refused: Python says which */
        if (head_name_is(nm, nlen, "content-length")) {
            if (length_at >= 0 || value_end == value || value_end - value > HEAD_MAX_LENGTH_DIGITS)
                Py_RETURN_NONE; /* repeated, empty or long: Python compares or refuses them */
            for (Py_ssize_t i = value; i < value_end; i++) {
                if (p[i] < '0' || p[i] > '9')
                    Py_RETURN_NONE;
                length = length * 10 + (p[i] - '0');
            }
            length_at = count;
        } else if (head_name_is(nm, nlen, "connection")) {
            head_connection(p + value, value_end - value, &close, &keep_alive);
        }
        spans[count][0] = name;
        spans[count][1] = name_end;
        spans[count][2] = value;
        spans[count][3] = value_end;
        count++;
    }
    if (length > 0 && method_end == 4 && memcmp(p, "HEAD", 4) == 0)
        Py_RETURN_NONE; /* a HEAD request with a body: refused */
    PyObject *headers = PyList_New(count), *method = NULL, *target = NULL, *content_length = NULL;
    if (headers == NULL)
        return NULL;
    for (int i = 0; i < count; i++) {
        PyObject *pair;
        if (i == length_at) {
            PyObject *number = PyUnicode_FromFormat("%lld", length);
            pair = number == NULL ? NULL : PyTuple_Pack(2, head_content_length, number);
            Py_XDECREF(number);
        } else {
            PyObject *key = PyUnicode_DecodeLatin1((const char *)p + spans[i][0], spans[i][1] - spans[i][0], NULL);
            PyObject *val = PyUnicode_DecodeLatin1((const char *)p + spans[i][2], spans[i][3] - spans[i][2], NULL);
            pair = key == NULL || val == NULL ? NULL : PyTuple_Pack(2, key, val);
            Py_XDECREF(key);
            Py_XDECREF(val);
        }
        if (pair == NULL)
            goto fail;
        PyList_SET_ITEM(headers, i, pair);
    }
    method = PyUnicode_DecodeASCII((const char *)p, method_end, NULL);
    target = PyUnicode_DecodeLatin1((const char *)p + target_start, target_end - target_start, NULL);
    if (length_at >= 0)
        content_length = PyLong_FromLongLong(length);
    else
        content_length = Py_NewRef(Py_None);
    if (method == NULL || target == NULL || content_length == NULL)
        goto fail;
    int persistent = http11 ? !close : keep_alive && !close;
    return Py_BuildValue("(NNONNOO)", method, target, http11 ? head_http11 : head_http10, headers, content_length,
                         Py_False, persistent ? Py_True : Py_False);
fail:
    Py_DECREF(headers);
    Py_XDECREF(method);
    Py_XDECREF(target);
    Py_XDECREF(content_length);
    return NULL;
}

/* -- json_fields: journal payloads straight to the forwarder's JSON ------------------------- */

/* Nesting json_fields leaves to Python beyond, counting the record's own document: well inside
 * what bson.decode, json.dumps and orjson (254) take. */
#define JSON_DEPTH_CAP 100
#define JSON_MAX_NAMES 8
/* The milliseconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z: what datetime holds. */
#define JSON_MS_MIN (-62135596800000LL)
#define JSON_MS_MAX 253402300799999LL

static const char json_hex[] = "0123456789abcdef";
/* How json.dumps(ensure_ascii=False) writes each ASCII byte of text: 0 as it is, else the letter
 * after its backslash ('u' for \u00xx). Bytes from 0x80 are UTF-8, written as they are. */
static unsigned char json_escape[128];

static void json_tables(void) {
    for (int c = 0; c < 0x20; c++)
        json_escape[c] = 'u';
    json_escape['"'] = '"';
    json_escape['\\'] = '\\';
    json_escape['\b'] = 'b';
    json_escape['\f'] = 'f';
    json_escape['\n'] = 'n';
    json_escape['\r'] = 'r';
    json_escape['\t'] = 't';
}

typedef struct {
    const unsigned char *p;
    Py_ssize_t n;
} span_t;

typedef struct {
    buffer_t out;  /* the record's JSON */
    span_t *keys;  /* the keys of the documents being written, the innermost's last */
    Py_ssize_t n_keys, keys_cap;
} json_t;

/* The top-level fields asked for: their names (UTF-8; length -1 for one no key can be) and,
 * per record, the BSON type and value of each found (type 0: absent). */
typedef struct {
    int count;
    int times_before; /* names from this index on must be text: a time there is not ours */
    const char *name[JSON_MAX_NAMES];
    Py_ssize_t length[JSON_MAX_NAMES];
    unsigned char type[JSON_MAX_NAMES];
    const unsigned char *value[JSON_MAX_NAMES];
} fields_t;

/* The length of the UTF-8 sequence at s (n bytes left, s[0] >= 0x80) if Python's strict
 * decoder takes it (no overlong form, no surrogate, at most U+10FFFF), else 0. */
static int utf8_sequence(const unsigned char *s, Py_ssize_t n) {
    unsigned char c = s[0], lo = 0x80, hi = 0xBF;
    int length;
    if (c < 0xC2)
        return 0;
    if (c < 0xE0)
        length = 2;
    else if (c < 0xF0) {
        length = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c < 0xF5) {
        length = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (n < length || s[1] < lo || s[1] > hi)
        return 0;
    for (int i = 2; i < length; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return length;
}

/* UTF-8 text (s, n bytes) as a JSON string; NOT_OURS if it is not strict UTF-8. */
static int json_text(buffer_t *b, const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    if (put(b, "\"", 1) < 0)
        return FAILED;
    while (i < n) {
        /* A chunk at a time: room for its every byte escaped, and a sequence across its end. */
        Py_ssize_t stop = n - i > 4096 ? i + 4096 : n;
        if (grow(b, 6 * (stop - i) + 8) < 0)
            return FAILED;
        unsigned char *o = b->data + b->len;
        while (i < stop) {
            unsigned char c = s[i];
            if (c < 0x80) {
                unsigned char e = json_escape[c];
                i++;
                if (!e) {
                    *o++ = c;
                    continue;
                }
                *o++ = '\\';
                *o++ = e;
                if (e == 'u') {
                    *o++ = '0';
                    *o++ = '0';
                    *o++ = (unsigned char)json_hex[c >> 4];
                    *o++ = (unsigned char)json_hex[c & 15];
                }
            } else {
                int k = utf8_sequence(s + i, n - i);
                if (!k)
                    return NOT_OURS;
                memcpy(o, s + i, (size_t)k);
                o += k;
                i += k;
            }
        }
        b->len = o - b->data;
    }
    return put(b, "\"", 1) < 0 ? FAILED : ENCODED;
}

static int json_integer(buffer_t *b, int64_t v) {
    unsigned char digits[20];
    int k = 0;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        digits[k++] = (unsigned char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (grow(b, k + 1) < 0)
        return FAILED;
    if (v < 0)
        b->data[b->len++] = '-';
    while (k)
        b->data[b->len++] = digits[--k];
    return ENCODED;
}

/* float.__repr__, as json.dumps writes a finite float. */
static int json_double(buffer_t *b, double d) {
    if (!isfinite(d))
        return NOT_OURS; /* json writes NaN or Infinity, orjson null: Python decides */
    char *s = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (s == NULL)
        return FAILED;
    int r = put(b, s, (Py_ssize_t)strlen(s)) < 0 ? FAILED : ENCODED;
    PyMem_Free(s);
    return r;
}

/* `n` bytes as a quoted string of lower-case hex: an ObjectId, or bytes (codec.to_json_value). */
static int json_hex_string(buffer_t *b, const unsigned char *p, Py_ssize_t n) {
    if (grow(b, 2 * n + 2) < 0)
        return FAILED;
    unsigned char *o = b->data + b->len;
    *o++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        *o++ = (unsigned char)json_hex[p[i] >> 4];
        *o++ = (unsigned char)json_hex[p[i] & 15];
    }
    *o++ = '"';
    b->len = o - b->data;
    return ENCODED;
}

static unsigned char *json_digits(unsigned char *o, long long v, int width) {
    for (int i = width - 1; i >= 0; i--) {
        o[i] = (unsigned char)('0' + v % 10);
        v /= 10;
    }
    return o + width;
}

/* A BSON datetime as codec.to_json_value writes the tz-aware UTC datetime bson.decode makes of
 * it: isoformat() with Z for +00:00, microseconds only when not zero. NOT_OURS outside years
 * 1..9999 (which bson.decode refuses). */
static int json_datetime(buffer_t *b, int64_t ms) {
    if (ms < JSON_MS_MIN || ms > JSON_MS_MAX)
        return NOT_OURS;
    long long milli = ms % 1000, secs = ms / 1000;
    if (milli < 0) {
        milli += 1000;
        secs -= 1;
    }
    long long days = secs / 86400, day_secs = secs % 86400;
    if (day_secs < 0) {
        day_secs += 86400;
        days -= 1;
    }
    /* The civil date of a day count (H. Hinnant's days_from_civil, inverted). */
    long long z = days + 719468;
    long long era = (z >= 0 ? z : z - 146096) / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153;
    long long day = doy - (153 * mp + 2) / 5 + 1;
    long long month = mp < 10 ? mp + 3 : mp - 9;
    long long year = yoe + era * 400 + (month <= 2);
    if (grow(b, 34) < 0)
        return FAILED;
    unsigned char *o = b->data + b->len;
    *o++ = '"';
    o = json_digits(o, year, 4);
    *o++ = '-';
    o = json_digits(o, month, 2);
    *o++ = '-';
    o = json_digits(o, day, 2);
    *o++ = 'T';
    o = json_digits(o, day_secs / 3600, 2);
    *o++ = ':';
    o = json_digits(o, day_secs / 60 % 60, 2);
    *o++ = ':';
    o = json_digits(o, day_secs % 60, 2);
    if (milli) {
        *o++ = '.';
        o = json_digits(o, milli * 1000, 6);
    }
    *o++ = 'Z';
    *o++ = '"';
    b->len = o - b->data;
    return ENCODED;
}

static int64_t read_i64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return (int64_t)v;
}

static int span_order(const void *a, const void *b) {
    const span_t *x = a, *y = b;
    if (x->n != y->n)
        return x->n < y->n ? -1 : 1;
    return memcmp(x->p, y->p, (size_t)x->n);
}

/* True if two of keys[0..n) are the same. Sorts them (they are not needed after). */
static int repeated_key(span_t *keys, Py_ssize_t n) {
    if (n <= 16) {
        for (Py_ssize_t i = 1; i < n; i++)
            for (Py_ssize_t k = 0; k < i; k++)
                if (keys[i].n == keys[k].n && memcmp(keys[i].p, keys[k].p, (size_t)keys[i].n) == 0)
                    return 1;
        return 0;
    }
    qsort(keys, (size_t)n, sizeof *keys, span_order);
    for (Py_ssize_t i = 1; i < n; i++)
        if (span_order(&keys[i - 1], &keys[i]) == 0)
            return 1;
    return 0;
}

static int json_value(json_t *j, unsigned char type, const unsigned char *p, const unsigned char *end, long depth,
                      Py_ssize_t *used);

/* The document (or array) at p, which must end by `end`, `depth` levels down (the record's own
 * document is 1), as JSON; its size in *used. At the top level `fields` notes the fields asked
 * for. */
static int json_container(json_t *j, const unsigned char *p, const unsigned char *end, int is_array, long depth,
                          fields_t *fields, Py_ssize_t *used) {
    if (depth > JSON_DEPTH_CAP || end - p < 5)
        return NOT_OURS;
    int32_t size = read_i32(p);
    if (size < 5 || size > end - p)
        return NOT_OURS;
    const unsigned char *q = p + 4, *last = p + size - 1; /* last: the terminating NUL */
    if (*last != 0)
        return NOT_OURS;
    Py_ssize_t keys_base = j->n_keys;
    int first = 1;
    if (put(&j->out, is_array ? "[" : "{", 1) < 0)
        return FAILED;
    while (q < last) {
        unsigned char type = *q++;
        Py_ssize_t key_length = cstring_length(q, last);
        if (key_length < 0)
            return NOT_OURS;
        const unsigned char *key = q;
        q += key_length + 1;
        if (!first && put(&j->out, ",", 1) < 0)
            return FAILED;
        first = 0;
        if (!is_array) { /* an array's keys: bson.decode skips them unread */
            /* A document with $ref (and $id) decodes to a DBRef, not a dict. */
            if (key_length == 4 && memcmp(key, "$ref", 4) == 0)
                return NOT_OURS;
            if (j->n_keys == j->keys_cap) {
                Py_ssize_t cap = j->keys_cap ? 2 * j->keys_cap : 64;
                span_t *keys = PyMem_Realloc(j->keys, (size_t)cap * sizeof *keys);
                if (keys == NULL) {
                    PyErr_NoMemory();
                    return FAILED;
                }
                j->keys = keys;
                j->keys_cap = cap;
            }
            j->keys[j->n_keys].p = key;
            j->keys[j->n_keys++].n = key_length;
            int r = json_text(&j->out, key, key_length);
            if (r != ENCODED)
                return r;
            if (put(&j->out, ":", 1) < 0)
                return FAILED;
            if (fields != NULL) {
                for (int i = 0; i < fields->count; i++) {
                    if (fields->length[i] != key_length || memcmp(fields->name[i], key, (size_t)key_length) != 0)
                        continue;
                    if (type != 0x02 && (type != 0x09 || i >= fields->times_before))
                        return NOT_OURS; /* a field asked for, neither text nor a time where one may be */
                    fields->type[i] = type;
                    fields->value[i] = q;
                }
            }
        }
        Py_ssize_t n;
        int r = json_value(j, type, q, last, depth, &n);
        if (r != ENCODED)
            return r;
        q += n;
    }
    if (q != last)
        return NOT_OURS;
    if (put(&j->out, is_array ? "]" : "}", 1) < 0)
        return FAILED;
    /* bson.decode keeps one value of a repeated key, in the first one's place. */
    if (repeated_key(j->keys + keys_base, j->n_keys - keys_base))
        return NOT_OURS;
    j->n_keys = keys_base;
    *used = size;
    return ENCODED;
}

/* The value of BSON `type` at p, which must end by `end`, in a container `depth` levels down,
 * as JSON; the bytes it takes in *used. */
static int json_value(json_t *j, unsigned char type, const unsigned char *p, const unsigned char *end, long depth,
                      Py_ssize_t *used) {
    buffer_t *b = &j->out;
    const unsigned char *s;
    Py_ssize_t n;
    switch (type) {
    case 0x01: /* double */
        if (end - p < 8)
            return NOT_OURS;
        *used = 8;
        return json_double(b, read_double(p));
    case 0x02: /* string */
        if ((*used = string_value(p, end, &s, &n)) < 0)
            return NOT_OURS;
        return json_text(b, s, n);
    case 0x03: /* document */
        return json_container(j, p, end, 0, depth + 1, NULL, used);
    case 0x04: /* array */
        return json_container(j, p, end, 1, depth + 1, NULL, used);
    case 0x05: /* binary: only subtype 0, which decodes to bytes */
        if (end - p < 5)
            return NOT_OURS;
        n = read_i32(p);
        if (n < 0 || n > end - p - 5 || p[4] != 0)
            return NOT_OURS;
        *used = 5 + n;
        return json_hex_string(b, p + 5, n);
    case 0x07: /* ObjectId */
        if (end - p < 12)
            return NOT_OURS;
        *used = 12;
        return json_hex_string(b, p, 12);
    case 0x08: /* boolean: 0 or 1, else bson.decode refuses it */
        if (end - p < 1 || p[0] > 1)
            return NOT_OURS;
        *used = 1;
        return put(b, p[0] ? "true" : "false", p[0] ? 4 : 5) < 0 ? FAILED : ENCODED;
    case 0x09: /* UTC datetime */
        if (end - p < 8)
            return NOT_OURS;
        *used = 8;
        return json_datetime(b, read_i64(p));
    case 0x0A: /* null */
        *used = 0;
        return put(b, "null", 4) < 0 ? FAILED : ENCODED;
    case 0x10: /* int32 */
        if (end - p < 4)
            return NOT_OURS;
        *used = 4;
        return json_integer(b, read_i32(p));
    case 0x12: /* int64 */
        if (end - p < 8)
            return NOT_OURS;
        *used = 8;
        return json_integer(b, read_i64(p));
    default:
        return NOT_OURS;
    }
}

/* One payload's (json, values...) tuple, Py_None, or NULL with an exception set. */
static PyObject *json_record(json_t *j, const unsigned char *p, Py_ssize_t n, fields_t *fields) {
    j->out.len = 0;
    j->n_keys = 0;
    for (int i = 0; i < fields->count; i++)
        fields->type[i] = 0;
    if (n < 5 || read_i32(p) != n)
        Py_RETURN_NONE;
    Py_ssize_t used;
    int r = json_container(j, p, p + n, 0, 1, fields, &used);
    if (r == FAILED)
        return NULL;
    if (r == NOT_OURS)
        Py_RETURN_NONE;
    PyObject *out = PyTuple_New(1 + fields->count);
    if (out == NULL)
        return NULL;
    PyObject *json = PyBytes_FromStringAndSize((const char *)j->out.data, j->out.len);
    if (json == NULL)
        goto fail;
    PyTuple_SET_ITEM(out, 0, json);
    for (int i = 0; i < fields->count; i++) {
        PyObject *value;
        const unsigned char *v = fields->value[i];
        if (fields->type[i] == 0x02)
            value = PyUnicode_DecodeUTF8((const char *)v + 4, read_i32(v) - 1, NULL); /* checked: valid */
        else if (fields->type[i] == 0x09)
            value = PyLong_FromLongLong(read_i64(v));
        else
            value = Py_NewRef(Py_None);
        if (value == NULL)
            goto fail;
        PyTuple_SET_ITEM(out, 1 + i, value);
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *json_fields(PyObject *self, PyObject *args) {
    PyObject *payloads, *names;
    int times_before = JSON_MAX_NAMES;
    if (!PyArg_ParseTuple(args, "OO!|i:json_fields", &payloads, &PyTuple_Type, &names, &times_before))
        return NULL;
    fields_t fields;
    if (PyTuple_GET_SIZE(names) > JSON_MAX_NAMES)
        return PyErr_Format(PyExc_ValueError, "at most %d names, got %zd", JSON_MAX_NAMES, PyTuple_GET_SIZE(names));
    fields.count = (int)PyTuple_GET_SIZE(names);
    fields.times_before = times_before;
    for (int i = 0; i < fields.count; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        if (!PyUnicode_Check(name))
            return PyErr_Format(PyExc_TypeError, "name %d is %.50s, not str", i, Py_TYPE(name)->tp_name);
        fields.name[i] = PyUnicode_AsUTF8AndSize(name, &fields.length[i]);
        if (fields.name[i] == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
                return NULL;
            PyErr_Clear(); /* a lone surrogate: no decoded key is this name */
            fields.length[i] = -1;
        }
    }
    /* A tuple of the payloads: nothing run during the walk (a finalizer run by the collector
     * while allocating) can change what is being read. */
    PyObject *items = PySequence_Tuple(payloads);
    if (items == NULL)
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(items);
    json_t j = {{NULL, 0, 0}, NULL, 0, 0};
    PyObject *out = PyList_New(count);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyTuple_GET_ITEM(items, i);
        if (!PyBytes_Check(item)) {
            PyErr_Format(PyExc_TypeError, "payload %zd is %.50s, not bytes", i, Py_TYPE(item)->tp_name);
            Py_CLEAR(out);
            goto done;
        }
        PyObject *result = json_record(&j, (const unsigned char *)PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item),
                                       &fields);
        if (result == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, result);
    }
done:
    PyMem_Free(j.out.data);
    PyMem_Free(j.keys);
    Py_DECREF(items);
    return out;
}


/* -- ndjson_frames: NDJSON lines straight to BSON documents --------------------------------- */

#define NDJSON_DEPTH_CAP 64 /* nesting left to Python beyond (objects and arrays, the line's own) */
#define NDJSON_MAX_KEYS 64  /* keys of one object checked for repeats; more are left to Python */
#define NDJSON_MAX_NUMBER 64 /* a number's characters; longer ones are left to Python */

typedef struct {
    const unsigned char *p, *end; /* what is left of the line */
    buffer_t b;                   /* the document being written */
} ndjson_t;

static void ndjson_space(ndjson_t *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\r'))
        j->p++;
}

static int hex_digit(unsigned char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The JSON string at j->p (its opening quote) written out decoded, without its quotes. Only text
 * that decodes to ASCII without NUL is ours: a plain event holds no other (plain_frame). */
static int ndjson_string(ndjson_t *j) {
    j->p++;
    const unsigned char *run = j->p;
    for (;;) {
        if (j->p >= j->end)
            return NOT_OURS;
        unsigned char c = *j->p;
        if (c == '"' || c == '\\') {
            if (put(&j->b, run, j->p - run) < 0)
                return FAILED;
            if (c == '"') {
                j->p++;
                return ENCODED;
            }
            if (j->end - j->p < 2)
                return NOT_OURS;
            unsigned char e = j->p[1], out;
            j->p += 2;
            switch (e) {
            case '"': case '\\': case '/': out = e; break;
            case 'b': out = '\b'; break;
            case 'f': out = '\f'; break;
            case 'n': out = '\n'; break;
            case 'r': out = '\r'; break;
            case 't': out = '\t'; break;
            case 'u': {
                if (j->end - j->p < 4)
                    return NOT_OURS;
                int code = 0;
                for (int i = 0; i < 4; i++) {
                    int h = hex_digit(j->p[i]);
                    if (h < 0)
                        return NOT_OURS;
                    code = code * 16 + h;
                }
                if (code == 0 || code >= 0x80)
                    return NOT_OURS;
                out = (unsigned char)code;
                j->p += 4;
                break;
            }
            default:
                return NOT_OURS;
            }
            if (put(&j->b, &out, 1) < 0)
                return FAILED;
            run = j->p;
        } else if (c < 0x20 || c >= 0x80) {
            return NOT_OURS; /* a control character (refused by json) or non-ASCII text */
        } else {
            j->p++;
        }
    }
}

/* The JSON number at j->p as a BSON int32, int64 or double (pymongo's choice for the int or float
 * json gives); its type byte in *type. Integers beyond 64 bits are left to Python. */
static int ndjson_number(ndjson_t *j, unsigned char *type) {
    const unsigned char *start = j->p, *q = j->p;
    int is_float = 0;
    if (q < j->end && *q == '-')
        q++;
    if (q >= j->end || *q < '0' || *q > '9')
        return NOT_OURS;
    if (*q == '0')
        q++;
    else
        while (q < j->end && *q >= '0' && *q <= '9')
            q++;
    const unsigned char *int_end = q;
    if (q < j->end && *q == '.') {
        is_float = 1;
        q++;
        if (q >= j->end || *q < '0' || *q > '9')
            return NOT_OURS;
        while (q < j->end && *q >= '0' && *q <= '9')
            q++;
    }
    if (q < j->end && (*q == 'e' || *q == 'E')) {
        is_float = 1;
        q++;
        if (q < j->end && (*q == '+' || *q == '-'))
            q++;
        if (q >= j->end || *q < '0' || *q > '9')
            return NOT_OURS;
        while (q < j->end && *q >= '0' && *q <= '9')
            q++;
    }
    Py_ssize_t n = q - start;
    if (n > NDJSON_MAX_NUMBER)
        return NOT_OURS;
    unsigned char le[8];
    if (is_float) {
        char text[NDJSON_MAX_NUMBER + 1], *parsed_end;
        memcpy(text, start, (size_t)n);
        text[n] = '\0';
        /* Python's own correctly rounded conversion: what float() and json give. */
        double d = PyOS_string_to_double(text, &parsed_end, NULL);
        if (d == -1.0 && PyErr_Occurred()) {
            if (PyErr_ExceptionMatches(PyExc_MemoryError))
                return FAILED;
            PyErr_Clear();
            return NOT_OURS;
        }
        if (parsed_end != text + n || !isfinite(d))
            return NOT_OURS; /* 1e400: json's inf, which Python refuses with its reason */
        uint64_t u;
        memcpy(&u, &d, 8);
        for (int i = 0; i < 8; i++)
            le[i] = (unsigned char)(u >> (8 * i));
        *type = 0x01;
        j->p = q;
        return put(&j->b, le, 8) < 0 ? FAILED : ENCODED;
    }
    const unsigned char *digits = start + (*start == '-');
    if (int_end - digits > 19) /* 10**19 > 2**63: beyond 64 bits */
        return NOT_OURS;
    uint64_t magnitude = 0;
    for (const unsigned char *d = digits; d < int_end; d++)
        magnitude = magnitude * 10 + (uint64_t)(*d - '0');
    if (magnitude > (*start == '-' ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX))
        return NOT_OURS; /* Python's int, which pymongo cannot encode: Python says so */
    int64_t v = *start == '-' ? (int64_t)(0 - magnitude) : (int64_t)magnitude;
    j->p = q;
    if (v >= INT32_MIN && v <= INT32_MAX) {
        *type = 0x10;
        put_le32(le, (uint32_t)(int32_t)v);
        return put(&j->b, le, 4) < 0 ? FAILED : ENCODED;
    }
    *type = 0x12;
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)((uint64_t)v >> (8 * i));
    return put(&j->b, le, 8) < 0 ? FAILED : ENCODED;
}

static int ndjson_container(ndjson_t *j, int is_array, int depth, PyObject *names);

/* The JSON value at j->p written as a BSON value; its type byte in *type. */
static int ndjson_value(ndjson_t *j, unsigned char *type, int depth) {
    if (j->p >= j->end)
        return NOT_OURS;
    switch (*j->p) {
    case '{':
    case '[':
        *type = *j->p == '[' ? 0x04 : 0x03;
        return ndjson_container(j, *j->p == '[', depth + 1, NULL);
    case '"': {
        *type = 0x02;
        Py_ssize_t at = j->b.len;
        if (put_i32(&j->b, 0) < 0)
            return FAILED;
        int r = ndjson_string(j);
        if (r != ENCODED)
            return r;
        if (j->b.len - at - 4 + 1 > INT32_MAX)
            return NOT_OURS;
        put_le32(j->b.data + at, (uint32_t)(j->b.len - at - 4 + 1));
        return put(&j->b, "\0", 1) < 0 ? FAILED : ENCODED;
    }
    case 't':
    case 'f': {
        int truth = *j->p == 't';
        const char *word = truth ? "true" : "false";
        size_t n = strlen(word);
        if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0)
            return NOT_OURS;
        j->p += n;
        *type = 0x08;
        return put(&j->b, truth ? "\1" : "\0", 1) < 0 ? FAILED : ENCODED;
    }
    case 'n':
        if (j->end - j->p < 4 || memcmp(j->p, "null", 4) != 0)
            return NOT_OURS;
        j->p += 4;
        *type = 0x0A;
        return ENCODED;
    default:
        return ndjson_number(j, type);
    }
}

/* The JSON object or array at j->p as a BSON document or array: int32 size, elements, NUL. Any
 * key repeated within an object is left to Python (json keeps the last value in the first's
 * place). In the line's own object (`names` not NULL), so are the key "_id" (pymongo's encoder
 * writes it first) and the keys in `names` (a tuple of bytes: fields the caller adds where an
 * event has none). */
static int ndjson_container(ndjson_t *j, int is_array, int depth, PyObject *names) {
    if (depth > NDJSON_DEPTH_CAP)
        return NOT_OURS;
    Py_ssize_t start = j->b.len, key_at[NDJSON_MAX_KEYS], key_length[NDJSON_MAX_KEYS];
    int count = 0;
    unsigned char close = is_array ? ']' : '}';
    if (put_i32(&j->b, 0) < 0)
        return FAILED;
    j->p++;
    ndjson_space(j);
    if (j->p < j->end && *j->p == close) {
        j->p++;
    } else {
        for (;;) {
            Py_ssize_t type_at = j->b.len;
            if (put(&j->b, "\0", 1) < 0)
                return FAILED;
            if (is_array) {
                char key[24];
                int n = snprintf(key, sizeof key, "%d", count);
                if (put(&j->b, key, n + 1) < 0)
                    return FAILED;
            } else {
                if (j->p >= j->end || *j->p != '"' || count >= NDJSON_MAX_KEYS)
                    return NOT_OURS;
                Py_ssize_t at = j->b.len;
                int r = ndjson_string(j);
                if (r != ENCODED)
                    return r;
                Py_ssize_t n = j->b.len - at;
                const unsigned char *key = j->b.data + at;
                for (int i = 0; i < count; i++)
                    if (key_length[i] == n && memcmp(j->b.data + key_at[i], key, (size_t)n) == 0)
                        return NOT_OURS;
                if (names != NULL) {
                    if (n == 3 && memcmp(key, "_id", 3) == 0)
                        return NOT_OURS;
                    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
                        PyObject *name = PyTuple_GET_ITEM(names, i);
                        if (PyBytes_GET_SIZE(name) == n && memcmp(PyBytes_AS_STRING(name), key, (size_t)n) == 0)
                            return NOT_OURS;
                    }
                }
                key_at[count] = at;
                key_length[count] = n;
                if (put(&j->b, "\0", 1) < 0)
                    return FAILED;
                ndjson_space(j);
                if (j->p >= j->end || *j->p != ':')
                    return NOT_OURS;
                j->p++;
                ndjson_space(j);
            }
            unsigned char type;
            int r = ndjson_value(j, &type, depth);
            if (r != ENCODED)
                return r;
            j->b.data[type_at] = type;
            count++;
            ndjson_space(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                ndjson_space(j);
                continue;
            }
            if (j->p < j->end && *j->p == close) {
                j->p++;
                break;
            }
            return NOT_OURS;
        }
    }
    if (put(&j->b, "\0", 1) < 0)
        return FAILED;
    if (j->b.len - start > INT32_MAX)
        return NOT_OURS;
    put_le32(j->b.data + start, (uint32_t)(j->b.len - start));
    return ENCODED;
}

static int ndjson_blank(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\r';
}

static PyObject *ndjson_frames(PyObject *self, PyObject *args) {
    Py_buffer body;
    PyObject *names;
    if (!PyArg_ParseTuple(args, "y*O!:ndjson_frames", &body, &PyTuple_Type, &names))
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++)
        if (!PyBytes_Check(PyTuple_GET_ITEM(names, i))) {
            PyBuffer_Release(&body);
            PyErr_SetString(PyExc_TypeError, "ndjson_frames: names must be a tuple of bytes");
            return NULL;
        }
    ndjson_t j = {NULL, NULL, {NULL, 0, 0}};
    PyObject *out = PyList_New(0);
    const unsigned char *p = body.buf, *end = p + body.len;
    while (out != NULL && p < end) {
        /* A line as _parse_ndjson takes it: up to "\n", without blanks around, skipped if empty. */
        const unsigned char *newline = memchr(p, '\n', (size_t)(end - p));
        const unsigned char *line_end = newline ? newline : end, *q = p;
        p = newline ? newline + 1 : end;
        while (q < line_end && ndjson_blank(*q))
            q++;
        while (line_end > q && ndjson_blank(line_end[-1]))
            line_end--;
        if (q == line_end)
            continue;
        j.p = q;
        j.end = line_end;
        j.b.len = 0;
        int r = *q == '{' ? ndjson_container(&j, 0, 1, names) : NOT_OURS;
        if (r == ENCODED && j.p != j.end)
            r = NOT_OURS;
        if (r != ENCODED) {
            Py_CLEAR(out);
            if (r == NOT_OURS)
                out = Py_NewRef(Py_None);
            break;
        }
        PyObject *frame = PyBytes_FromStringAndSize((const char *)j.b.data, j.b.len);
        if (frame == NULL || PyList_Append(out, frame) < 0)
            Py_CLEAR(out);
        Py_XDECREF(frame);
    }
    if (out != NULL && out != Py_None && PyList_GET_SIZE(out) == 0)
        Py_SETREF(out, Py_NewRef(Py_None)); /* no event: Python says the batch is empty */
    PyMem_Free(j.b.data);
    PyBuffer_Release(&body);
    return out;
}

/* ---- receive_frames: a burst of ZeroMQ messages in one call ------------------------------- */

/* libzmq's message, as zmq.h declares it since 4.0 (64 bytes, pointer-aligned). */
typedef struct {
    _Alignas(void *) unsigned char _[64];
} zmq_msg_t;

static struct {
    int (*msg_init)(zmq_msg_t *);
    int (*msg_recv)(zmq_msg_t *, void *, int);
    void *(*msg_data)(zmq_msg_t *);
    size_t (*msg_size)(const zmq_msg_t *);
    int (*msg_close)(zmq_msg_t *);
    int (*errno_)(void);
} zmq_api;

#define ZMQ_DONTWAIT_ 1

static PyObject *use_libzmq(PyObject *self, PyObject *arg) {
    const char *path = PyUnicode_AsUTF8(arg);
    if (path == NULL)
        return NULL;
    /* Only a libzmq already loaded (by pyzmq): never a second copy with sockets of its own. */
    void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL)
        Py_RETURN_FALSE;
    zmq_api.msg_init = (int (*)(zmq_msg_t *))dlsym(lib, "zmq_msg_init");
    zmq_api.msg_recv = (int (*)(zmq_msg_t *, void *, int))dlsym(lib, "zmq_msg_recv");
    zmq_api.msg_data = (void *(*)(zmq_msg_t *))dlsym(lib, "zmq_msg_data");
    zmq_api.msg_size = (size_t (*)(const zmq_msg_t *))dlsym(lib, "zmq_msg_size");
    zmq_api.msg_close = (int (*)(zmq_msg_t *))dlsym(lib, "zmq_msg_close");
    zmq_api.errno_ = (int (*)(void))dlsym(lib, "zmq_errno");
    if (!zmq_api.msg_init || !zmq_api.msg_recv || !zmq_api.msg_data || !zmq_api.msg_size ||
        !zmq_api.msg_close || !zmq_api.errno_) {
        memset(&zmq_api, 0, sizeof zmq_api);
        Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

static PyObject *receive_frames(PyObject *self, PyObject *args) {
    unsigned long long handle;
    Py_ssize_t max_frames;
    if (!PyArg_ParseTuple(args, "Kn:receive_frames", &handle, &max_frames))
        return NULL;
    if (zmq_api.msg_recv == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "receive_frames: use_libzmq has not found libzmq");
        return NULL;
    }
    if (handle == 0) {
        PyErr_SetString(PyExc_ValueError, "receive_frames: a closed socket");
        return NULL;
    }
    void *socket = (void *)(uintptr_t)handle;
    PyObject *frames = PyList_New(0);
    if (frames == NULL)
        return NULL;
    int error = 0;
    while (PyList_GET_SIZE(frames) < max_frames) {
        zmq_msg_t msg;
        zmq_api.msg_init(&msg);
        if (zmq_api.msg_recv(&msg, socket, ZMQ_DONTWAIT_) < 0) {
            error = zmq_api.errno_();
            zmq_api.msg_close(&msg);
            break;
        }
        PyObject *frame = PyBytes_FromStringAndSize((const char *)zmq_api.msg_data(&msg),
                                                    (Py_ssize_t)zmq_api.msg_size(&msg));
        zmq_api.msg_close(&msg);
        if (frame == NULL || PyList_Append(frames, frame) < 0) {
            Py_XDECREF(frame);
            Py_DECREF(frames);
            return NULL;
        }
        Py_DECREF(frame);
    }
    PyObject *result = Py_BuildValue("(Ni)", frames, error);
    return result;
}

static PyMethodDef methods[] = {
    {"plain_bson_frames", plain_bson_frames, METH_VARARGS,
     "plain_bson_frames(frames, max_string_bytes, max_depth, max_fields[, fields]) -> list: for "
     "each BSON frame, a dict of its top-level string fields (True with fields false) if "
     "event.sender_fields keeps it exactly as sent, else None (the pure-Python path decides)."},
    {"plain_events", plain_events, METH_VARARGS,
     "plain_events(raws, max_string_bytes, max_depth, max_fields) -> bytes: 1 for each decoded "
     "event event.sender_fields keeps as it is, else 0."},
    {"encode_spliced", encode_spliced, METH_VARARGS,
     "encode_spliced(fields, offset, head, stamp, tail, extra) -> list or None: "
     "journal.codec.encode_batch's payloads, or None for the Python encoder."},
    {"splice", splice, METH_VARARGS,
     "splice(docs, offset, head, stamp, tail, extra) -> list: journal.codec._spliced of each "
     "whole document at offset, offset + 1, ..."},
    {"frame_all", frame_all, METH_VARARGS,
     "frame_all(offset, payloads) -> bytes: the journal records of payloads, joined."},
    {"record_marks", record_marks, METH_VARARGS,
     "record_marks(data, position, spacing) -> list of (offset, position) for the index."},
    {"parse_run", parse_run, METH_VARARGS,
     "parse_run(buf, pos, want, limit, max_records, max_bytes, position, next_note, spacing) -> "
     "(records, pos, notes, next_note): journal.record.parse_run, a run of intact records."},
    {"parse_head", parse_head, METH_O,
     "parse_head(head) -> tuple or None: httpframing.parse_head's Head fields for a common, valid "
     "request head, else None (the Python parser decides)."},
    {"json_fields", json_fields, METH_VARARGS,
     "json_fields(payloads, names) -> list: for each journal payload, (json, *values of the top-level "
     "fields named) as event_json_bytes(decode_event(payload)) writes it, or None (Python decides)."},
    {"ndjson_frames", ndjson_frames, METH_VARARGS,
     "ndjson_frames(body, names) -> list or None: each NDJSON line of body as the BSON document "
     "pymongo encodes of json's value, or None where Python must decode the lines."},
    {"use_libzmq", use_libzmq, METH_O,
     "use_libzmq(path) -> bool: receive_frames calls the libzmq loaded from `path` (not loading it)."},
    {"receive_frames", receive_frames, METH_VARARGS,
     "receive_frames(handle, max_frames) -> (frames, errno): up to max_frames messages of the "
     "socket `handle` without waiting, and the error that ended the burst (0 if none)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "zspark._native",
                                    "zspark's compiled hot paths (see zspark/native.py).", -1, methods};

PyMODINIT_FUNC PyInit__native(void) {
    for (int i = 0; i < N_FIELDS; i++) {
        field_objects[i] = PyUnicode_InternFromString(FIELD_NAMES[i]);
        if (field_objects[i] == NULL)
            return NULL;
    }
    head_tables();
    json_tables();
    head_http10 = PyUnicode_InternFromString("HTTP/1.0");
    head_http11 = PyUnicode_InternFromString("HTTP/1.1");
    head_content_length = PyUnicode_InternFromString("Content-Length");
    if (head_http10 == NULL || head_http11 == NULL || head_content_length == NULL)
        return NULL;
    return PyModule_Create(&module);
}
