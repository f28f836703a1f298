/* wire.c - events' protobuf bytes assembled in plain C (no Python.h), loaded with ctypes (agent/wire.py).
 *
 * A connect flood is the one load that reaches the agent by the hundred thousand. Python assembling each
 * connect's bytes, putting its seq in front and framing it for a RawBatch cost ~6 us per event; here each is a
 * few memcpy. Both functions write the canonical protobuf encoding that agent/encoded.py writes in Python (the
 * fallback, and the oracle of tests/test_wire.py): proto3 fields equal to their default are not written, ints
 * as varints (negative ones as ten-byte two's complement).
 *
 * Built by scripts/setup.sh (cc -O2 -shared -fPIC), or at the agent's start when a compiler is there. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

static uint64_t varint_len(uint64_t v)
{
    uint64_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint64_t int_field_len(uint64_t v)
{
    return v ? 1 + varint_len(v) : 0;
}

static uint8_t *put_int_field(uint8_t *p, uint8_t number, uint64_t v)
{
    if (!v)
        return p;
    *p++ = (uint8_t)(number << 3);
    return put_varint(p, v);
}

static uint8_t *put_piece(uint8_t *p, const uint8_t *pieces, const uint64_t *off, uint32_t i)
{
    uint64_t len = off[i + 1] - off[i];
    memcpy(p, pieces + off[i], len);
    return p + len;
}

/* One connect event per row (agent/encoded.py connect_data): Event field 2 (time), the prefix piece (boot id,
 * process, job), field 11 Connect { address piece (fields 1-3), 4 dport, 5 result, name piece (6-7), 8 repeats,
 * 9 image_nolink }. Pieces are byte strings: piece i is pieces[off[i]..off[i+1]]. `out` holds at least
 * gg_connects_bound() bytes; ends[row] is where the row's event ends. Returns the bytes written. */
uint64_t gg_encode_connects(uint64_t n, const int64_t *ts, const uint32_t *prefix, const uint32_t *address,
                            const uint32_t *name, const int64_t *dport, const int64_t *result,
                            const int64_t *repeats, const uint8_t *nolink, const uint8_t *pieces,
                            const uint64_t *off, uint8_t *out, uint64_t *ends)
{
    uint8_t *p = out;
    for (uint64_t r = 0; r < n; r++) {
        uint64_t body = (off[address[r] + 1] - off[address[r]]) + int_field_len((uint64_t)dport[r])
                        + int_field_len((uint64_t)result[r]) + (off[name[r] + 1] - off[name[r]])
                        + int_field_len((uint64_t)repeats[r]) + (nolink[r] ? 2 : 0);
        p = put_int_field(p, 2, (uint64_t)ts[r]);
        p = put_piece(p, pieces, off, prefix[r]);
        *p++ = (11 << 3) | 2;
        p = put_varint(p, body);
        p = put_piece(p, pieces, off, address[r]);
        p = put_int_field(p, 4, (uint64_t)dport[r]);
        p = put_int_field(p, 5, (uint64_t)result[r]);
        p = put_piece(p, pieces, off, name[r]);
        p = put_int_field(p, 8, (uint64_t)repeats[r]);
        if (nolink[r]) {
            *p++ = 9 << 3;
            *p++ = 1;
        }
        ends[r] = (uint64_t)(p - out);
    }
    return (uint64_t)(p - out);
}

/* Events (data[ends[i-1]..ends[i]], every field but seq) -> LogBatch.events frames as a RawBatch carries them:
 * tag 0x22, varint length, then the event with its seq (field 1, first_seq + i) in front. `out` holds at least
 * len(data) + 17 * n bytes; out_ends[i] is where frame i ends. Returns the bytes written. */
uint64_t gg_frame_events(uint64_t n, const uint8_t *data, const uint64_t *ends, uint64_t first_seq,
                         uint8_t *out, uint64_t *out_ends)
{
    uint8_t *p = out;
    uint64_t start = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t seq = first_seq + i, len = ends[i] - start;
        *p++ = 0x22;
        p = put_varint(p, int_field_len(seq) + len);
        p = put_int_field(p, 1, seq);
        memcpy(p, data + start, len);
        p += len;
        start = ends[i];
        out_ends[i] = (uint64_t)(p - out);
    }
    return (uint64_t)(p - out);
}

static uint64_t piece_len(const uint64_t *off, uint32_t i)
{
    return off[i + 1] - off[i];
}

static uint64_t decimal_len(uint64_t v)
{
    uint64_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

static uint8_t *put_decimal(uint8_t *p, uint64_t v, uint64_t len)
{
    for (uint64_t i = len; i > 0; i--) {
        p[i - 1] = (uint8_t)('0' + v % 10);
        v /= 10;
    }
    return p + len;
}

/* A short life's numbers and pieces (agent/lifecycle_batch.py): LIFE_NUMS int64 and LIFE_REFS piece indexes per
 * life, in this order. */
enum { N_EXEC_TS, N_EXIT_TS, N_PID, N_START, N_TID, N_XTID, N_PPID, N_CODE, N_SIGNAL, LIFE_NUMS };
enum { R_PARENT_KEY, R_COMM, R_XCOMM, R_TAIL, R_XTAIL, R_ANCESTRY, R_JOB, R_BODY, LIFE_REFS };

/* Short lives' exec and exit events (agent/lifecycle_batch.py; the Python there is the fallback and the oracle of
 * tests/test_lifecycle_batch.py), in the order `order` gives (2n entries: i < n is life i's exec, n + i its
 * exit). An event: field 2 time, the boot piece (field 3), field 4 Process { 1 key (key_prefix piece, pid, ':',
 * start ticks), the parent key piece (field 2), 3 pid, 4 tid, 5 ppid, the comm piece (field 6), the tail piece
 * (fields 7-13), for the exec the ancestry piece (field 14) }, the job piece (field 5), then the exec's body piece
 * under exec_tag or Exit { 1 code, 2 signal } under exit_tag. Returns the bytes written. */
uint64_t gg_encode_lives(uint64_t n, const uint64_t *order, const int64_t *nums, const uint32_t *refs,
                         uint32_t key_prefix, uint32_t boot, uint8_t exec_tag, uint8_t exit_tag,
                         const uint8_t *pieces, const uint64_t *off, uint8_t *out, uint64_t *ends)
{
    uint8_t *p = out;
    for (uint64_t e = 0; e < 2 * n; e++) {
        int is_exit = order[e] >= n;
        uint64_t life = is_exit ? order[e] - n : order[e];
        const int64_t *v = nums + life * LIFE_NUMS;
        const uint32_t *r = refs + life * LIFE_REFS;
        uint64_t pid = (uint64_t)v[N_PID], start = (uint64_t)v[N_START];
        uint64_t tid = (uint64_t)(is_exit ? v[N_XTID] : v[N_TID]);
        uint32_t comm = is_exit ? r[R_XCOMM] : r[R_COMM], tail = is_exit ? r[R_XTAIL] : r[R_TAIL];
        uint64_t pid_digits = decimal_len(pid), start_digits = decimal_len(start);
        uint64_t key_len = piece_len(off, key_prefix) + pid_digits + 1 + start_digits;
        uint64_t process = 1 + varint_len(key_len) + key_len + piece_len(off, r[R_PARENT_KEY]) + int_field_len(pid)
                           + int_field_len(tid) + int_field_len((uint64_t)v[N_PPID]) + piece_len(off, comm)
                           + piece_len(off, tail) + (is_exit ? 0 : piece_len(off, r[R_ANCESTRY]));
        p = put_int_field(p, 2, (uint64_t)(is_exit ? v[N_EXIT_TS] : v[N_EXEC_TS]));
        p = put_piece(p, pieces, off, boot);
        *p++ = (4 << 3) | 2;
        p = put_varint(p, process);
        *p++ = (1 << 3) | 2;
        p = put_varint(p, key_len);
        p = put_piece(p, pieces, off, key_prefix);
        p = put_decimal(p, pid, pid_digits);
        *p++ = ':';
        p = put_decimal(p, start, start_digits);
        p = put_piece(p, pieces, off, r[R_PARENT_KEY]);
        p = put_int_field(p, 3, pid);
        p = put_int_field(p, 4, tid);
        p = put_int_field(p, 5, (uint64_t)v[N_PPID]);
        p = put_piece(p, pieces, off, comm);
        p = put_piece(p, pieces, off, tail);
        if (!is_exit)
            p = put_piece(p, pieces, off, r[R_ANCESTRY]);
        p = put_piece(p, pieces, off, r[R_JOB]);
        if (is_exit) {
            *p++ = exit_tag;
            p = put_varint(p, int_field_len((uint64_t)v[N_CODE]) + int_field_len((uint64_t)v[N_SIGNAL]));
            p = put_int_field(p, 1, (uint64_t)v[N_CODE]);
            p = put_int_field(p, 2, (uint64_t)v[N_SIGNAL]);
        } else {
            *p++ = exec_tag;
            p = put_varint(p, piece_len(off, r[R_BODY]));
            p = put_piece(p, pieces, off, r[R_BODY]);
        }
        ends[e] = (uint64_t)(p - out);
    }
    return (uint64_t)(p - out);
}
