/* Per-process dedup table: the first occurrence of each distinct behaviour is sent, repeats are
 * only counted and later summarised by REPEAT records.
 *
 * Fixed size, open addressing with linear probing, lock-free: a slot is claimed with a CAS on its
 * key, its first record is written, then it is published (state READY). Repeat counts are atomic
 * counters that may be incremented before the slot is published; only published slots are
 * flushed. Nothing here blocks or allocates, so it is safe from any thread and from a signal
 * handler. Identities are 64-bit hashes: two distinct behaviours collide with negligible
 * probability (about n²/2⁶⁵ for n entries).
 *
 * The metadata array (16 bytes a slot) is what lookups touch; the stored first records live in a
 * separate BSS array whose pages are only touched when a slot is used.
 */
#include "shim.h"

#include <pthread.h>

enum { SLOT_EMPTY = 0, SLOT_CLAIMED = 1, SLOT_READY = 2 };

struct dedup_meta shim_dedup_meta[DEDUP_SLOTS];
static uint8_t stored[DEDUP_SLOTS][DEDUP_REC_MAX];
static uint64_t last_flush_ns; /* monotonic coarse; atomic */

_Static_assert((DEDUP_SLOTS & (DEDUP_SLOTS - 1)) == 0, "DEDUP_SLOTS must be a power of two");
_Static_assert(DEDUP_REC_MAX >= REC_HEADER_SIZE + 64, "stored records must hold a header");

int dedup_hit_probe(uint64_t key)
{
    unsigned i = (unsigned)key & (DEDUP_SLOTS - 1);
    for (unsigned probe = 0; probe < DEDUP_SLOTS; probe++) {
        uint64_t k = __atomic_load_n(&shim_dedup_meta[i].key, __ATOMIC_ACQUIRE);
        if (k == key) {
            __atomic_fetch_add(&shim_dedup_meta[i].pending, 1, __ATOMIC_RELAXED);
            return 1;
        }
        if (k == 0)
            return 0;
        i = (i + 1) & (DEDUP_SLOTS - 1);
    }
    return 0;
}

int dedup_claim(uint64_t key, int *slot)
{
    unsigned i = (unsigned)key & (DEDUP_SLOTS - 1);
    for (unsigned probe = 0; probe < DEDUP_SLOTS; probe++) {
        uint64_t k = __atomic_load_n(&shim_dedup_meta[i].key, __ATOMIC_ACQUIRE);
        if (k == 0) {
            uint64_t expected = 0;
            if (__atomic_compare_exchange_n(&shim_dedup_meta[i].key, &expected, key, 0,
                                            __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                __atomic_store_n(&shim_dedup_meta[i].state, SLOT_CLAIMED, __ATOMIC_RELAXED);
                *slot = (int)i;
                return DEDUP_CLAIMED;
            }
            k = expected; /* someone else took this slot: is it our key? */
        }
        if (k == key) {
            __atomic_fetch_add(&shim_dedup_meta[i].pending, 1, __ATOMIC_RELAXED);
            return DEDUP_HIT;
        }
        i = (i + 1) & (DEDUP_SLOTS - 1);
    }
    return DEDUP_FULL;
}

int dedup_first(uint64_t key, int tick, int *pid, int *foreign, int *slot, unsigned *flags)
{
    *foreign = shim_foreign_process(pid);
    if (*foreign) {
        *flags |= FLAG_NODEDUP;
        return 1;
    }
    if (tick)
        dedup_tick();
    int claim = dedup_hit(key) ? DEDUP_HIT : dedup_claim(key, slot);
    if (claim == DEDUP_HIT)
        return 0;
    if (claim == DEDUP_FULL)
        *flags |= FLAG_NODEDUP;
    return 1;
}

void dedup_store(int slot, const uint8_t *rec, size_t len)
{
    size_t n = rec_copy_fit(stored[slot], DEDUP_REC_MAX, rec, len);
    shim_dedup_meta[slot].len = (uint16_t)n;
    __atomic_store_n(&shim_dedup_meta[slot].state, SLOT_READY, __ATOMIC_RELEASE);
}

void dedup_flush(void)
{
    int pid;
    if (shim_foreign_process(&pid))
        return; /* the table belongs to the process whose memory we share */
    int ppid = -1, tid = -1;
    uint64_t now = 0;
    uint8_t buf[DEDUP_REC_MAX];
    for (unsigned i = 0; i < DEDUP_SLOTS; i++) {
        if (__atomic_load_n(&shim_dedup_meta[i].state, __ATOMIC_ACQUIRE) != SLOT_READY)
            continue;
        if (__atomic_load_n(&shim_dedup_meta[i].pending, __ATOMIC_RELAXED) == 0)
            continue;
        uint32_t n = __atomic_exchange_n(&shim_dedup_meta[i].pending, 0, __ATOMIC_ACQ_REL);
        if (n == 0)
            continue;
        if (ppid < 0) {
            ppid = (int)getppid();
            tid = (int)gettid();
            now = rec_now_ns();
        }
        size_t len = shim_dedup_meta[i].len;
        memcpy(buf, stored[i], len);
        rec_restamp(buf, pid, ppid, tid, now);
        rec_set_u16(buf, HDR_FLAGS, (uint16_t)(rec_get_u16(buf, HDR_FLAGS) | FLAG_REPEAT));
        rec_set_u32(buf, HDR_COUNT, n);
        shim_before_record();
        if (report_send(buf, len) != 0) /* retry at the next flush */
            __atomic_fetch_add(&shim_dedup_meta[i].pending, n, __ATOMIC_RELAXED);
    }
    calls_flush();
}

__thread unsigned shim_tick_skip __attribute__((tls_model("initial-exec")));
static __thread uint64_t tick_checked_ns __attribute__((tls_model("initial-exec")));

/* The clock read of dedup_tick, which costs about as much as the rest of a dedup hit. A thread
 * whose previous read was within the same millisecond (one tick of the coarse clock) is calling
 * often: it skips the clock for its next DEDUP_TICK_EVERY - 1 calls. So repeats are flushed at
 * the first call a second after the last flush, or at most DEDUP_TICK_EVERY - 1 calls of that
 * thread later (and at exec and exit in any case). */
void dedup_tick_check(void)
{
    uint64_t now = shim_mono_ns();
    shim_tick_skip = now - tick_checked_ns < 1000000 ? DEDUP_TICK_EVERY - 1 : 0;
    tick_checked_ns = now;
    uint64_t last = __atomic_load_n(&last_flush_ns, __ATOMIC_RELAXED);
    if (SHIM_LIKELY((int64_t)(now - last) < 1000000000)) /* signed: a racing reader may lag */
        return;
    if (!__atomic_compare_exchange_n(&last_flush_ns, &last, now, 0, __ATOMIC_RELAXED,
                                     __ATOMIC_RELAXED))
        return; /* another thread flushes */
    int state;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &state);
    dedup_flush();
    pthread_setcancelstate(state, NULL);
}

void dedup_reset(void)
{
    memset(shim_dedup_meta, 0, sizeof shim_dedup_meta);
    calls_reset();
    __atomic_store_n(&last_flush_ns, shim_mono_ns(), __ATOMIC_RELAXED);
}
