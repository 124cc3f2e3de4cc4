/* Record building: header and tag-length-value fields of the v1 format (FORMAT.md).
 *
 * Builders never write past `cap`: a fixed-size field that does not fit is left out and a
 * byte-string field is cut, and in both cases the record is flagged TRUNCATED.
 */
#include "shim.h"

#include <time.h>

void rec_set_u16(uint8_t *buf, size_t off, uint16_t v)
{
    memcpy(buf + off, &v, sizeof v);
}

void rec_set_u32(uint8_t *buf, size_t off, uint32_t v)
{
    memcpy(buf + off, &v, sizeof v);
}

void rec_set_u64(uint8_t *buf, size_t off, uint64_t v)
{
    memcpy(buf + off, &v, sizeof v);
}

uint16_t rec_get_u16(const uint8_t *buf, size_t off)
{
    uint16_t v;
    memcpy(&v, buf + off, sizeof v);
    return v;
}

uint64_t rec_now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void rec_restamp(uint8_t *buf, int pid, int ppid, int tid, uint64_t time_ns)
{
    rec_set_u32(buf, HDR_PID, (uint32_t)pid);
    rec_set_u32(buf, HDR_PPID, (uint32_t)ppid);
    rec_set_u32(buf, HDR_TID, (uint32_t)tid);
    rec_set_u64(buf, HDR_TIME, time_ns);
}

void rec_begin(struct rec *r, uint8_t *buf, size_t cap, unsigned kind, int pid)
{
    r->buf = buf;
    r->cap = cap > REC_MAX ? REC_MAX : cap;
    r->len = REC_HEADER_SIZE;
    memset(buf, 0, REC_HEADER_SIZE);
    rec_set_u16(buf, HDR_MAGIC, REC_MAGIC);
    buf[HDR_VERSION] = REC_VERSION;
    buf[HDR_KIND] = (uint8_t)kind;
    rec_set_u32(buf, HDR_COUNT, 1);
    rec_restamp(buf, pid, (int)getppid(), (int)gettid(), rec_now_ns());
}

void rec_add_flags(struct rec *r, unsigned flags)
{
    rec_set_u16(r->buf, HDR_FLAGS, (uint16_t)(rec_get_u16(r->buf, HDR_FLAGS) | flags));
}

size_t rec_room(const struct rec *r)
{
    return r->cap - r->len >= 4 ? r->cap - r->len - 4 : 0;
}

static void put_field(struct rec *r, unsigned tag, const void *data, size_t n)
{
    rec_set_u16(r->buf, r->len, (uint16_t)tag);
    rec_set_u16(r->buf, r->len + 2, (uint16_t)n);
    if (n)
        memcpy(r->buf + r->len + 4, data, n);
    r->len += 4 + n;
}

void rec_put(struct rec *r, unsigned tag, const void *data, size_t n)
{
    if (r->cap - r->len < 4 || n > rec_room(r)) {
        rec_add_flags(r, FLAG_TRUNCATED);
        return;
    }
    put_field(r, tag, data, n);
}

void rec_put_bytes(struct rec *r, unsigned tag, const void *data, size_t n, size_t max)
{
    if (r->cap - r->len < 4) {
        rec_add_flags(r, FLAG_TRUNCATED);
        return;
    }
    size_t room = rec_room(r);
    if (max > room)
        max = room;
    if (n > max) {
        n = max;
        rec_add_flags(r, FLAG_TRUNCATED);
    }
    put_field(r, tag, data, n);
}

void rec_put_argv(struct rec *r, char *const argv[])
{
    if (r->cap - r->len < 4) {
        rec_add_flags(r, FLAG_TRUNCATED);
        return;
    }
    size_t room = rec_room(r);
    uint8_t *body = r->buf + r->len + 4;
    size_t n = 0;
    int cut = 0;
    for (size_t i = 0; argv && argv[i]; i++) {
        size_t alen = strlen(argv[i]) + 1; /* with its NUL terminator */
        if (alen > room - n) {
            memcpy(body + n, argv[i], room - n);
            n = room;
            cut = 1;
            break;
        }
        memcpy(body + n, argv[i], alen);
        n += alen;
    }
    rec_set_u16(r->buf, r->len, TAG_ARGV);
    rec_set_u16(r->buf, r->len + 2, (uint16_t)n);
    r->len += 4 + n;
    if (cut)
        rec_add_flags(r, FLAG_TRUNCATED);
}

void rec_put_i32(struct rec *r, unsigned tag, int32_t v)
{
    rec_put(r, tag, &v, sizeof v);
}

void rec_put_u32(struct rec *r, unsigned tag, uint32_t v)
{
    rec_put(r, tag, &v, sizeof v);
}

void rec_put_u8(struct rec *r, unsigned tag, uint8_t v)
{
    rec_put(r, tag, &v, sizeof v);
}

static int is_bytes_tag(unsigned tag)
{
    return tag == TAG_EXE || tag == TAG_ARGV || tag == TAG_CWD || tag == TAG_PATH ||
           tag == TAG_WORKLOAD;
}

size_t rec_copy_fit(uint8_t *dst, size_t cap, const uint8_t *src, size_t len)
{
    if (len <= cap) {
        memcpy(dst, src, len);
        return len;
    }
    memcpy(dst, src, REC_HEADER_SIZE);
    size_t in = REC_HEADER_SIZE, out = REC_HEADER_SIZE;
    while (in + 4 <= len) {
        unsigned tag = rec_get_u16(src, in);
        size_t n = rec_get_u16(src, in + 2);
        if (in + 4 + n > len)
            break;
        if (out + 4 + n <= cap) {
            memcpy(dst + out, src + in, 4 + n);
            out += 4 + n;
            in += 4 + n;
            continue;
        }
        if (is_bytes_tag(tag) && out + 4 < cap) {
            size_t keep = cap - out - 4;
            rec_set_u16(dst, out, (uint16_t)tag);
            rec_set_u16(dst, out + 2, (uint16_t)keep);
            memcpy(dst + out + 4, src + in + 4, keep);
            out += 4 + keep;
        }
        break;
    }
    rec_set_u16(dst, HDR_FLAGS, (uint16_t)(rec_get_u16(dst, HDR_FLAGS) | FLAG_TRUNCATED));
    rec_set_u16(dst, HDR_LENGTH, (uint16_t)out);
    return out;
}
