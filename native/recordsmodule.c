/*
 * telltale._native._records: the agent's fast path from shim records to serialized Events.
 *
 * For each record of shim/FORMAT.md (v1) other than PROC_START, `encode` validates the record with
 * exactly the rules of the reference decoder (nodeagent/records.py) and serializes the
 * telltale.v1.Event that `convert.to_event` would build from it, *without* the workload id and
 * the process details learnt from the start record: the caller prepends those (a serialized
 * prefix), and protobuf's merge-on-parse joins them. `drain` reads a non-blocking SOCK_SEQPACKET
 * socket with recvmmsg and encodes every message it reads.
 *
 * Anything this code does not turn into an Event — a PROC_START, a record the reference decoder
 * would reject, a text field that is not strict UTF-8 (the reference decoder escapes it) — is
 * handed back as the raw message, for the Python path to decode, convert or count as malformed.
 * So the fast path never decides that a record is malformed and never changes what is counted.
 * `join_events` frames serialized Events as one EventBatch, so that Python parses a run of them in
 * one call.
 *
 * Keep in step with records.py and convert.py: a change there needs the same change here
 * (tests/test_native_records.py checks that both paths agree, record kind by record kind and on
 * random and damaged input). Every entry point holds the GIL throughout, which is what makes the
 * static buffers below safe; the module is not for free-threaded builds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define HEADER_SIZE 40
#define MAX_RECORD 4096
#define MAGIC 0x5454
#define VERSION 1
#define KIND_PROC_START 1
#define KIND_MAX 15
#define TAG_MAX 27
#define TAG_CAPABILITIES 33 /* CREDENTIALS of capset: not encoded here */
#define TAG_CALLER 40       /* every kind: Event.caller_module */
#define CALLER_MAX 512
#define OUT_SIZE 16384
#define BATCH 64

enum {
    T_EXE = 1, T_ARGV, T_CWD, T_CREDS, T_SOCKADDR, T_RESULT, T_SOCKINFO, T_BACKLOG, T_PATH, T_VARIANT,
    T_WORKLOAD, T_CHILD_PID, T_NAME, T_ADDRESSES, T_FUNCTION, T_IDS, T_GROUPS, T_REQUEST, T_TARGET_PID,
    T_OPTION, T_ARGUMENT, T_MEMFD_NAME, T_MEMFD_FLAGS, T_FILE_FLAGS, T_FILE_MODE, T_CHANGE, T_NEW_PATH
};

enum { K_EXEC = 2, K_CONNECT, K_BIND, K_LISTEN, K_SOCKET, K_ACCEPT, K_SEND, K_RESOLVE, K_FILE_OPEN,
       K_FILE_CHANGE, K_CREDENTIALS, K_PTRACE, K_PRCTL, K_MEMFD };

/* ---- little-endian readers ---------------------------------------------------------------- */

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }

/* ---- a bounded protobuf writer ------------------------------------------------------------- */

typedef struct {
    uint8_t *buf;
    size_t len, cap;
    int overflow;
} Out;

static inline void put_byte(Out *o, uint8_t b) {
    if (o->len < o->cap)
        o->buf[o->len++] = b;
    else
        o->overflow = 1;
}

static inline void put_bytes(Out *o, const uint8_t *p, size_t n) {
    if (o->cap - o->len < n) {
        o->overflow = 1;
        return;
    }
    memcpy(o->buf + o->len, p, n);
    o->len += n;
}

static inline void put_varint(Out *o, uint64_t v) {
    while (v >= 0x80) {
        put_byte(o, (uint8_t)(v | 0x80));
        v >>= 7;
    }
    put_byte(o, (uint8_t)v);
}

static inline void put_tag(Out *o, unsigned field, unsigned wire) { put_varint(o, (uint64_t)(field << 3 | wire)); }

/* A varint field, left out when zero (proto3 implicit presence). Signed values are sign-extended
 * to 64 bits, as protobuf encodes int32 and int64. */
static inline void put_uint(Out *o, unsigned field, uint64_t v) {
    if (v) {
        put_tag(o, field, 0);
        put_varint(o, v);
    }
}
static inline void put_int(Out *o, unsigned field, int64_t v) { put_uint(o, field, (uint64_t)v); }

static inline void put_len(Out *o, unsigned field, const uint8_t *p, size_t n) {
    put_tag(o, field, 2);
    put_varint(o, n);
    put_bytes(o, p, n);
}

/* A string field, left out when empty. */
static inline void put_str(Out *o, unsigned field, const uint8_t *p, size_t n) {
    if (n) put_len(o, field, p, n);
}

/* A submessage, present even when empty: its body was written to `sub`. */
static inline void put_sub(Out *o, unsigned field, const Out *sub) {
    if (sub->overflow) o->overflow = 1;
    put_len(o, field, sub->buf, sub->len);
}

/* ---- strict UTF-8 (what Python's decoder accepts without error handlers) ------------------ */

static int utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c == 0xE0) { need = 2; lo = 0xA0; }
        else if (c >= 0xE1 && c <= 0xEC) need = 2;
        else if (c == 0xED) { need = 2; hi = 0x9F; }
        else if (c >= 0xEE && c <= 0xEF) need = 2;
        else if (c == 0xF0) { need = 3; lo = 0x90; }
        else if (c >= 0xF1 && c <= 0xF3) need = 3;
        else if (c == 0xF4) { need = 3; hi = 0x8F; }
        else return 0;
        if (n - i - 1 < need) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (size_t k = 2; k <= need; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return 0;
        i += need + 1;
    }
    return 1;
}

/* ---- decoding -------------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    uint16_t n;
} Field;

/* Field bodies by tag (index 1..TAG_MAX); p == NULL when absent. */
typedef Field Fields[TAG_MAX + 1];

/* Fixed body sizes of the tags that have one (0: variable). */
static const uint16_t FIXED_SIZE[TAG_MAX + 1] = {
    [T_CREDS] = 24, [T_RESULT] = 8, [T_SOCKINFO] = 12, [T_BACKLOG] = 4, [T_VARIANT] = 1,
    [T_CHILD_PID] = 4, [T_REQUEST] = 4, [T_TARGET_PID] = 4, [T_OPTION] = 4, [T_ARGUMENT] = 8,
    [T_MEMFD_FLAGS] = 4, [T_FILE_FLAGS] = 4, [T_FILE_MODE] = 4, [T_CHANGE] = 1,
};

/* Splits NUL-terminated items and writes each as a repeated string field; the last item may lack
 * its NUL. Returns 0 when an item is not strict UTF-8, or (`no_empty`) when one is empty. */
static int put_nul_list(Out *o, unsigned field, const Field *f, int no_empty) {
    const uint8_t *s = f->p, *end = f->p + f->n;
    while (s < end) {
        const uint8_t *z = memchr(s, 0, (size_t)(end - s));
        const uint8_t *stop = z ? z : end;
        size_t len = (size_t)(stop - s);
        if (no_empty && len == 0) return 0;
        if (!utf8_valid(s, len)) return 0;
        put_len(o, field, s, len);
        s = z ? z + 1 : end;
    }
    return 1;
}

/* The ADDRESSES rule of the reference decoder: no empty address, wherever the field appears. */
static int addresses_valid(const Field *f) {
    const uint8_t *s = f->p, *end = f->p + f->n;
    while (s < end) {
        const uint8_t *z = memchr(s, 0, (size_t)(end - s));
        if (z == s) return 0;
        s = z ? z + 1 : end;
    }
    return 1;
}

static const char HEX[] = "0123456789abcdef";

/* The SocketAddress message of a SOCKADDR body (length >= 2). Returns 0 for a unix path that is
 * not strict UTF-8 (left to the reference decoder). */
static int put_sockaddr(Out *o, const Field *f) {
    const uint8_t *raw = f->p;
    size_t n = f->n;
    uint16_t family = rd16(raw);
    char text[INET6_ADDRSTRLEN + 16];
    uint8_t body[2 * MAX_RECORD + 64];
    Out a = {body, 0, sizeof body, 0};
    if (family == AF_INET) {
        put_len(&a, 1, (const uint8_t *)"inet", 4);
        if (n >= 8) {
            size_t len = 0;
            for (int i = 0; i < 4; i++) { /* dotted decimal, as inet_ntop writes it */
                unsigned v = raw[4 + i];
                if (i) text[len++] = '.';
                if (v >= 100) text[len++] = (char)('0' + v / 100);
                if (v >= 10) text[len++] = (char)('0' + v / 10 % 10);
                text[len++] = (char)('0' + v % 10);
            }
            put_str(&a, 2, (const uint8_t *)text, len);
            put_uint(&a, 3, (uint64_t)((raw[2] << 8) | raw[3]));
        }
    } else if (family == AF_INET6) {
        put_len(&a, 1, (const uint8_t *)"inet6", 5);
        if (n >= 24) {
            if (!inet_ntop(AF_INET6, raw + 8, text, INET6_ADDRSTRLEN)) return 0;
            size_t len = strlen(text);
            if (n >= 28) {
                uint32_t scope = rd32(raw + 24);
                if (scope) len += (size_t)snprintf(text + len, sizeof text - len, "%%%u", scope);
            }
            put_str(&a, 2, (const uint8_t *)text, len);
            put_uint(&a, 3, (uint64_t)((raw[2] << 8) | raw[3]));
        }
    } else if (family == AF_UNIX) {
        put_len(&a, 1, (const uint8_t *)"unix", 4);
        const uint8_t *name = raw + 2;
        size_t len = n - 2;
        uint8_t path[MAX_RECORD];
        if (len && name[0] == 0) { /* abstract: length-delimited, NULs shown as "@" */
            for (size_t i = 0; i < len; i++) path[i] = name[i] ? name[i] : '@';
        } else {
            const uint8_t *z = memchr(name, 0, len);
            if (z) len = (size_t)(z - name);
            memcpy(path, name, len);
        }
        if (!utf8_valid(path, len)) return 0;
        put_str(&a, 2, path, len);
    } else {
        int k = snprintf(text, sizeof text, "other:%u", family);
        put_len(&a, 1, (const uint8_t *)text, (size_t)k);
        size_t len = n - 2;
        if (len) {
            put_tag(&a, 2, 2);
            put_varint(&a, 2 * len);
            for (size_t i = 0; i < len; i++) {
                put_byte(&a, (uint8_t)HEX[raw[2 + i] >> 4]);
                put_byte(&a, (uint8_t)HEX[raw[2 + i] & 15]);
            }
        }
    }
    put_sub(o, 1, &a);
    return 1;
}

/* A text field as a string field: 0 when not strict UTF-8. */
static inline int put_text(Out *o, unsigned field, const Field *f) {
    if (!f->p) return 1;
    if (!utf8_valid(f->p, f->n)) return 0;
    put_str(o, field, f->p, f->n);
    return 1;
}

static inline int32_t i32_at(const Field *f, size_t i) { return (int32_t)rd32(f->p + 4 * i); }

/* Encodes the Event of one message into `o`. Returns 1 when encoded, 0 when the message is left
 * to the reference path (PROC_START, invalid, or text that is not strict UTF-8). */
static int encode_record(const uint8_t *m, size_t n, Out *o, uint32_t hdr[4]) {
    if (n < HEADER_SIZE || n > MAX_RECORD) return 0;
    if (rd16(m) != MAGIC || m[2] != VERSION) return 0;
    unsigned kind = m[3];
    if (kind <= KIND_PROC_START || kind > KIND_MAX) return 0;
    if (rd16(m + 4) != n) return 0;
    unsigned flags = rd16(m + 6);
    uint32_t pid = rd32(m + 8), ppid = rd32(m + 12), tid = rd32(m + 16), count = rd32(m + 20);
    uint64_t time_ns = rd64(m + 24);
    uint32_t dropped = rd32(m + 32), seq = rd32(m + 36);

    Fields f;
    memset(f, 0, sizeof f);
    Field caller = {0};
    size_t off = HEADER_SIZE;
    while (off < n) {
        if (n - off < 4) return 0;
        unsigned tag = rd16(m + off);
        size_t flen = rd16(m + off + 2);
        off += 4;
        if (flen > n - off) return 0;
        if (tag >= 1 && tag <= TAG_MAX) {
            if (f[tag].p) return 0; /* duplicate */
            if (FIXED_SIZE[tag] && flen != FIXED_SIZE[tag]) return 0;
            f[tag].p = m + off;
            f[tag].n = (uint16_t)flen;
        } else if (tag == TAG_CALLER) {
            if (caller.p || flen == 0 || flen > CALLER_MAX) return 0; /* the reference decides */
            caller.p = m + off;
            caller.n = (uint16_t)flen;
        } else if (tag == TAG_CAPABILITIES && kind == K_CREDENTIALS) {
            return 0; /* capset's capability sets: left to the reference decoder */
        }
        off += flen;
    }
    /* The reference decoder's checks on field values, whatever the kind. */
    if (f[T_SOCKADDR].p && f[T_SOCKADDR].n < 2) return 0;
    if (f[T_VARIANT].p && (f[T_VARIANT].p[0] < 1 || f[T_VARIANT].p[0] > 11)) return 0;
    if (f[T_CHANGE].p && (f[T_CHANGE].p[0] < 1 || f[T_CHANGE].p[0] > 3)) return 0;
    if (f[T_NAME].p && f[T_NAME].n > 256) return 0;
    if (f[T_ADDRESSES].p && (f[T_ADDRESSES].n > 1024 || !addresses_valid(&f[T_ADDRESSES]))) return 0;
    if (f[T_FUNCTION].p && f[T_FUNCTION].n > 16) return 0;
    if (f[T_IDS].p && f[T_IDS].n != 8 && f[T_IDS].n != 16 && f[T_IDS].n != 24) return 0;
    if (f[T_GROUPS].p && (f[T_GROUPS].n % 4 || f[T_GROUPS].n > 256)) return 0;
    if (f[T_MEMFD_NAME].p && f[T_MEMFD_NAME].n > 256) return 0;

    uint8_t b1[OUT_SIZE];
    Out s = {b1, 0, sizeof b1, 0};

    put_uint(o, 1, kind);
    s.len = 0;
    put_uint(&s, 1, time_ns / 1000000000u);
    put_uint(&s, 2, time_ns % 1000000000u);
    put_sub(o, 2, &s);
    s.len = 0;
    put_uint(&s, 1, pid);
    put_uint(&s, 2, ppid);
    put_uint(&s, 3, tid);
    put_sub(o, 4, &s);
    put_uint(o, 5, count ? count : 1);
    if (!put_text(o, 9, &caller)) return 0;
    put_uint(o, 6, flags & 1);
    if (f[T_RESULT].p) {
        s.len = 0;
        put_uint(&s, 1, 1);
        put_int(&s, 2, i32_at(&f[T_RESULT], 0));
        put_int(&s, 3, i32_at(&f[T_RESULT], 1));
        put_sub(o, 7, &s);
    }
    put_uint(o, 8, (flags >> 1) & 1);

    s.len = 0;
    switch (kind) {
    case K_CONNECT: case K_BIND: case K_LISTEN: case K_SOCKET: case K_ACCEPT: case K_SEND:
        if (!f[T_SOCKADDR].p && !f[T_SOCKINFO].p && !f[T_BACKLOG].p) break;
        if (f[T_SOCKADDR].p && !put_sockaddr(&s, &f[T_SOCKADDR])) return 0;
        if (f[T_SOCKINFO].p) {
            put_int(&s, 2, i32_at(&f[T_SOCKINFO], 0));
            put_int(&s, 3, i32_at(&f[T_SOCKINFO], 1));
            put_int(&s, 4, i32_at(&f[T_SOCKINFO], 2));
        }
        if (f[T_BACKLOG].p) put_int(&s, 5, i32_at(&f[T_BACKLOG], 0));
        put_sub(o, 20, &s);
        break;
    case K_EXEC:
        if (!put_text(&s, 1, &f[T_PATH])) return 0;
        if (f[T_ARGV].p && !put_nul_list(&s, 2, &f[T_ARGV], 0)) return 0;
        if (f[T_VARIANT].p) put_uint(&s, 3, f[T_VARIANT].p[0]);
        if (f[T_CHILD_PID].p) put_uint(&s, 4, rd32(f[T_CHILD_PID].p));
        put_sub(o, 21, &s);
        break;
    case K_RESOLVE:
        if (!put_text(&s, 1, &f[T_NAME])) return 0;
        if (f[T_ADDRESSES].p && !put_nul_list(&s, 2, &f[T_ADDRESSES], 1)) return 0;
        if (f[T_FUNCTION].p && f[T_FUNCTION].n) { /* the gethostbyname family names itself */
            if (!put_text(&s, 3, &f[T_FUNCTION])) return 0;
        } else {
            put_len(&s, 3, (const uint8_t *)"getaddrinfo", 11);
        }
        put_sub(o, 22, &s);
        break;
    case K_FILE_OPEN: {
        int32_t fl = f[T_FILE_FLAGS].p ? i32_at(&f[T_FILE_FLAGS], 0) : 0;
        if (!put_text(&s, 1, &f[T_PATH])) return 0;
        put_int(&s, 2, fl);
        if (f[T_FILE_MODE].p) put_uint(&s, 3, rd32(f[T_FILE_MODE].p));
        put_uint(&s, 4, (fl & 03) || (fl & (0100 | 01000 | 02000)));
        if (!put_text(&s, 5, &f[T_FUNCTION])) return 0;
        put_sub(o, 23, &s);
        break;
    }
    case K_FILE_CHANGE:
        if (f[T_CHANGE].p) put_uint(&s, 1, f[T_CHANGE].p[0]);
        if (!put_text(&s, 2, &f[T_PATH])) return 0;
        if (!put_text(&s, 3, &f[T_NEW_PATH])) return 0;
        if (f[T_FILE_MODE].p) put_uint(&s, 4, rd32(f[T_FILE_MODE].p));
        put_sub(o, 24, &s);
        break;
    case K_CREDENTIALS: {
        const Field *fn = &f[T_FUNCTION];
        if (!put_text(&s, 1, fn)) return 0;
        if (f[T_IDS].p && fn->p && fn->n >= 3) {
            const uint8_t *tail = fn->p + fn->n - 3;
            unsigned field = memcmp(tail, "uid", 3) == 0 ? 2 : memcmp(tail, "gid", 3) == 0 ? 3 : 0;
            if (field) {
                uint8_t packed[3 * 10];
                Out p = {packed, 0, sizeof packed, 0};
                for (size_t i = 0; i < f[T_IDS].n / 8u; i++) put_varint(&p, rd64(f[T_IDS].p + 8 * i));
                put_len(&s, field, packed, p.len);
            }
        }
        if (f[T_GROUPS].p && f[T_GROUPS].n) {
            uint8_t packed[64 * 5];
            Out p = {packed, 0, sizeof packed, 0};
            for (size_t i = 0; i < f[T_GROUPS].n / 4u; i++) put_varint(&p, rd32(f[T_GROUPS].p + 4 * i));
            put_len(&s, 4, packed, p.len);
        }
        put_sub(o, 25, &s);
        break;
    }
    case K_PTRACE:
        if (f[T_REQUEST].p) put_int(&s, 1, i32_at(&f[T_REQUEST], 0));
        if (f[T_TARGET_PID].p) put_uint(&s, 2, rd32(f[T_TARGET_PID].p));
        put_sub(o, 26, &s);
        break;
    case K_PRCTL:
        if (f[T_OPTION].p) put_int(&s, 1, i32_at(&f[T_OPTION], 0));
        if (f[T_ARGUMENT].p) put_uint(&s, 2, rd64(f[T_ARGUMENT].p));
        put_sub(o, 27, &s);
        break;
    case K_MEMFD:
        if (!put_text(&s, 1, &f[T_MEMFD_NAME])) return 0;
        if (f[T_MEMFD_FLAGS].p) put_uint(&s, 2, rd32(f[T_MEMFD_FLAGS].p));
        put_sub(o, 28, &s);
        break;
    default:
        return 0;
    }
    if (o->overflow) return 0;
    hdr[0] = pid;
    hdr[1] = ppid;
    hdr[2] = dropped;
    hdr[3] = seq;
    return 1;
}

/* The item for one message: (pid, ppid, dropped, seq, event bytes), or the message itself. */
static PyObject *item_of(const uint8_t *m, size_t n) {
    static uint8_t buf[OUT_SIZE];
    Out o = {buf, 0, sizeof buf, 0};
    uint32_t hdr[4];
    if (!encode_record(m, n, &o, hdr)) return PyBytes_FromStringAndSize((const char *)m, (Py_ssize_t)n);
    PyObject *item = PyTuple_New(5);
    if (!item) return NULL;
    for (Py_ssize_t i = 0; i < 4; i++) {
        PyObject *v = PyLong_FromUnsignedLong(hdr[i]);
        if (!v) goto fail;
        PyTuple_SET_ITEM(item, i, v);
    }
    PyObject *body = PyBytes_FromStringAndSize((const char *)o.buf, (Py_ssize_t)o.len);
    if (!body) goto fail;
    PyTuple_SET_ITEM(item, 4, body);
    return item;
fail:
    Py_DECREF(item);
    return NULL;
}

PyDoc_STRVAR(encode_doc,
"encode(message, /)\n--\n\n"
"The item `drain` gives for one message: (pid, ppid, dropped, seq, event_bytes) when the fast\n"
"path encoded it, else the message itself as bytes (a PROC_START, an invalid record, or text\n"
"that is not strict UTF-8), for the reference decoder.");

static PyObject *encode(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *item;
    if ((size_t)view.len > MAX_RECORD)
        item = PyBytes_FromStringAndSize(view.buf, view.len);
    else
        item = item_of(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return item;
}

#define DRAIN_WOULD_BLOCK 0
#define DRAIN_LIMIT_REACHED 1
#define DRAIN_ERROR 2

PyDoc_STRVAR(drain_doc,
"drain(fd, limit, /)\n--\n\n"
"Read up to `limit` messages from the non-blocking SOCK_SEQPACKET socket `fd`.\n\n"
"Returns (items, status). items holds, in arrival order, one entry per message: a tuple\n"
"(pid, ppid, dropped, seq, event_bytes) as `encode` gives, the message as bytes for the\n"
"reference path, or None for a zero-length message (an empty message or the end of the\n"
"stream: the caller tells them apart; reading stops after the batch that holds one). status is 0 when the socket has nothing more queued,\n"
"1 when `limit` messages were read, 2 when reading failed (the connection is unusable).\n"
"A message longer than 4096 bytes comes back as its first 4097 bytes, for the reference path to\n"
"reject as too long (never cut to a length that might pass). Raises MemoryError.");

static PyObject *drain(PyObject *self, PyObject *args) {
    (void)self;
    int fd, limit;
    if (!PyArg_ParseTuple(args, "ii:drain", &fd, &limit)) return NULL;
    /* One byte more than a record may have: a longer message is seen as too long, not cut to fit. */
    static uint8_t bufs[BATCH][MAX_RECORD + 1];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    PyObject *items = PyList_New(0);
    if (!items) return NULL;
    int status = DRAIN_LIMIT_REACHED, got = 0;
    while (got < limit) {
        unsigned want = (unsigned)(limit - got < BATCH ? limit - got : BATCH);
        for (unsigned i = 0; i < want; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = MAX_RECORD + 1;
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int r = recvmmsg(fd, msgs, want, MSG_DONTWAIT, NULL);
        if (r < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0) goto fail;
                continue;
            }
            status = (errno == EAGAIN || errno == EWOULDBLOCK) ? DRAIN_WOULD_BLOCK : DRAIN_ERROR;
            break;
        }
        int empty = 0;
        for (int i = 0; i < r; i++) {
            PyObject *item;
            if (msgs[i].msg_len == 0) {
                item = Py_NewRef(Py_None);
                empty = 1;
            } else {
                item = item_of(bufs[i], msgs[i].msg_len);
                if (!item) goto fail;
            }
            int err = PyList_Append(items, item);
            Py_DECREF(item);
            if (err < 0) goto fail;
        }
        got += r;
        if (empty) { /* possibly the end of the stream: read no further, let the caller look */
            status = DRAIN_LIMIT_REACHED;
            break;
        }
        if ((unsigned)r < want) { /* nothing more queued right now */
            status = DRAIN_WOULD_BLOCK;
            break;
        }
    }
    return Py_BuildValue("(Ni)", items, status);
fail:
    Py_DECREF(items);
    return NULL;
}

PyDoc_STRVAR(join_events_doc,
"join_events(events, /)\n--\n\n"
"The serialized telltale.v1.EventBatch whose `events` are the given serialized Events, in order\n"
"(each written as field 3, length-delimited; nothing else is set). Raises TypeError when an item\n"
"is not bytes, MemoryError.");

static PyObject *join_events(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyList_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "join_events() takes a list of bytes");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(arg), total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *part = PyList_GET_ITEM(arg, i);
        if (!PyBytes_Check(part)) {
            PyErr_SetString(PyExc_TypeError, "join_events() takes a list of bytes");
            return NULL;
        }
        total += 1 + 10 + PyBytes_GET_SIZE(part);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (!out) return NULL;
    Out o = {(uint8_t *)PyBytes_AS_STRING(out), 0, (size_t)total, 0};
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *part = PyList_GET_ITEM(arg, i);
        put_len(&o, 3, (const uint8_t *)PyBytes_AS_STRING(part), (size_t)PyBytes_GET_SIZE(part));
    }
    if (_PyBytes_Resize(&out, (Py_ssize_t)o.len) < 0) return NULL;
    return out;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_O, encode_doc},
    {"drain", drain, METH_VARARGS, drain_doc},
    {"join_events", join_events, METH_O, join_events_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_records",
    "Shim records (shim/FORMAT.md v1) to serialized telltale.v1.Event bytes: the agent's fast path.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__records(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "WOULD_BLOCK", DRAIN_WOULD_BLOCK) < 0 ||
        PyModule_AddIntConstant(m, "LIMIT_REACHED", DRAIN_LIMIT_REACHED) < 0 ||
        PyModule_AddIntConstant(m, "ERROR", DRAIN_ERROR) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
