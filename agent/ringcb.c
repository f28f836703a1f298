/* ringcb.c - the agent's ring-buffer callback, in plain C (no Python.h), loaded with ctypes.
 *
 * libbpf calls it once per record; BCC's own callback crosses into Python per record (~1 us). This one copies
 * the record into the arena of its kind (records of one kind have one size, so an arena is an array numpy
 * reads in place: agent/batch.py) and notes the kind in an arrival list. A full arena or arrival list answers
 * -ENOSPC: libbpf then leaves the record in the ring and stops, and the agent drains the arenas and consumes
 * again, so nothing is lost between the ring and Python. A record of an unknown kind or size is counted and
 * dropped (the Python consumer counts those as malformed too).
 *
 * Built by scripts/setup.sh (cc -O2 -shared -fPIC), or at the agent's start when a compiler is there; without
 * it the agent falls back to BCC's Python callback (agent/ringcb.py). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define GG_KINDS 16
#define GG_KIND_OFFSET 16          /* struct event_header: ts_ns, cgroup_id, then kind */
#define GG_ENOSPC 28

struct gg_arena {
    uint8_t *buf;
    uint64_t cap;                  /* bytes */
    uint64_t used;                 /* bytes */
    uint64_t count;                /* records */
    uint64_t size;                 /* the kind's record size (0: unknown kind) */
};

struct gg_arenas {
    struct gg_arena a[GG_KINDS];
    uint8_t *order;                /* arrival order: one kind byte per record */
    uint64_t order_cap;
    uint64_t order_used;
    uint64_t full;                 /* times a record had to wait in the ring (an arena was full) */
    uint64_t malformed;            /* unknown kind or wrong size: dropped */
};

int gg_ring_record(void *ctx, void *data, size_t len)
{
    struct gg_arenas *s = ctx;
    uint32_t kind;
    if (len < GG_KIND_OFFSET + sizeof(kind)) {
        s->malformed++;
        return 0;
    }
    memcpy(&kind, (uint8_t *)data + GG_KIND_OFFSET, sizeof(kind));
    if (kind >= GG_KINDS || s->a[kind].size == 0 || len != s->a[kind].size) {
        s->malformed++;
        return 0;
    }
    struct gg_arena *a = &s->a[kind];
    if (a->used + len > a->cap || s->order_used >= s->order_cap) {
        s->full++;
        return -GG_ENOSPC;
    }
    memcpy(a->buf + a->used, data, len);
    a->used += len;
    a->count++;
    s->order[s->order_used++] = (uint8_t)kind;
    return 0;
}
