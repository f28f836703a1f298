/* enforce_argv.c - kill at exec by what the whole argv says, in the kernel, whatever the flood or the agent.
 *
 * The exec record carries a bounded argv, and a rule judged in user space is blind when the agent is
 * flooded, dead or handed a long first argument. Here the new image's argument area
 * (mm->arg_start..arg_end) is scanned in ARGV_CHUNK pieces, one piece per program run, the program
 * tail-calling itself (argv_scan_next), up to ARGV_SCAN_MAX bytes, for:
 *   - fingerprints: case-insensitive literals (rule key argv_has), NUL between arguments read as a space;
 *     a prefilter bit per hash of the last 4 bytes, an exact anchor lookup, then the whole literal compared
 *     backwards (after the piece: the ring holds this piece and the one before);
 *   - option letters of every argument ("-fNR" -> f, N, R; rule key argv_short_option_in), with ssh's
 *     value letters ending a cluster, from a transition table the agent writes (gpuguard/vocab.py's grammar);
 *   - "uninspectable": argv longer than ARGV_SCAN_MAX, an unreadable piece, or more anchor hits in a piece
 *     than ARGV_HITS (anchor stuffing) - itself a condition (ARGV_UNINSPECTABLE) a rule can name.
 * The decision walks the task's ancestor cgroups for argv_kill entries: (program-name sets or any, option
 * letters, literals that must all be present, literals one of which must be) -> SIGKILL and an enforcement record on the priority ring.
 * Monitor-mode scopes (exempt_scopes) are not killed: user space alerts from the exec record.
 *
 * Lifetime: kill_by_argv is attached through a pinned bpf_link like kill_at_exec (agent/pinned_exec.py), and
 * the prog array is pinned next to it, so a killed agent's node keeps killing by argv. */
#include "gpuguard.h"

#define ARGV_CHUNK 4096
#define ARGV_RING (2 * ARGV_CHUNK)
#define ARGV_SCAN_CALLS 16                  /* pieces per exec: 2 tail calls each (the kernel allows 33): 64 KiB */
#define ARGV_SCAN_MAX (ARGV_CHUNK * ARGV_SCAN_CALLS)
#define ARGV_FP_MAX 64
#define ARGV_FP_LEN 32
#define ARGV_HITS 32                        /* anchor hits verified per piece */
#define ARGV_ANCHOR_CANDS 4                 /* literals sharing their last 4 bytes */
#define ARGV_RULES 24                       /* argv_kill entries per scope (the built-in policy uses 16) */
#define ARGV_UNINSPECTABLE (1ULL << 63)
#define ARGV_HASH_MUL 2654435761u

struct argv_hit {
    u32 pos;                                /* position of the window's last byte, from arg_start */
    u32 win;                                /* the window: the last 4 folded bytes */
};

struct argv_scan {
    u64 p;                                  /* next user address to read */
    u64 end;                                /* mm->arg_end */
    u64 opts;                               /* option letters so far */
    u64 found;                              /* fingerprint bits so far (+ ARGV_UNINSPECTABLE) */
    u32 pos;                                /* bytes scanned */
    u32 win;
    u32 state;                              /* option grammar state (see agent/argv_scan.py) */
    u32 n;                                  /* this piece's length */
    u32 nhits;
    u32 _pad;
    struct argv_hit hits[2 * ARGV_HITS];    /* the second half takes hits past ARGV_HITS */
    u8 buf[ARGV_RING + ARGV_CHUNK];         /* this piece and the one before, folded in place (+ slack: the
                                             * verifier only knows the piece is < 2 * ARGV_CHUNK) */
};

/* argv_table.t[state << 8 | byte]: the option letter's bit (bits 0-51, a-z then A-Z), the next grammar state
 * (bits 52-53) and the byte folded (bits 56-63: A-Z -> a-z, NUL -> space). Written by agent/argv_scan.py. */
#define ARGV_T_LETTERS ((1ULL << 52) - 1)
#define ARGV_T_STATE 52
#define ARGV_T_FOLDED 56

struct argv_table {
    u64 t[4 * 256];
};

struct argv_bitmap {
    u64 w[1024];                            /* 65536 bits: (window * ARGV_HASH_MUL) >> 16 */
};

struct argv_cands {
    u32 n;
    u8 id[ARGV_ANCHOR_CANDS];
};

struct argv_fp {
    u32 len;
    u8 s[ARGV_FP_LEN];                      /* folded literal, right-aligned */
    u8 m[ARGV_FP_LEN];                      /* 0xff over the literal's bytes, 0 before them */
};

struct argv_rule {
    u32 rule;
    u32 _pad;
    u64 all;                                /* literal bits that must all be present (bit 63: uninspectable) */
    u64 any;                                /* and one of these (0: none needed) */
    u64 opts;                               /* and one of these option letters (0: none needed) */
    u64 comms;                              /* program-name sets, one of which holds the comm (0: any program) */
};

struct argv_comm {
    char comm[TASK_COMM_LEN];
};

struct argv_rules {
    u32 n;
    u32 _pad;
    struct argv_rule r[ARGV_RULES];
};

BPF_PERCPU_ARRAY(argv_scan_state, struct argv_scan, 1);
BPF_ARRAY(argv_table, struct argv_table, 1);
BPF_ARRAY(argv_anchor_bits, struct argv_bitmap, 1);
BPF_HASH(argv_anchors, u32, struct argv_cands, ARGV_FP_MAX);
BPF_ARRAY(argv_fps, struct argv_fp, ARGV_FP_MAX);
BPF_HASH(argv_kill, u64, struct argv_rules, 4096);
BPF_HASH(argv_comms, struct argv_comm, u64, 1024);   /* comm -> the name sets (bits) holding it */
BPF_ARRAY(argv_config, u32, 1);             /* [0] = 1 when argv_kill has entries */
#define ARGV_SCAN 0
#define ARGV_CHECK 1
BPF_PROG_ARRAY(argv_scan_next, 2);          /* [ARGV_SCAN] = argv_scan_piece, [ARGV_CHECK] = argv_check_piece */

/* Does the literal fp end at pos? Branch-free over all ARGV_FP_LEN bytes (the literal is stored right-aligned
 * with a mask): an early exit per byte would leave the verifier a pending state per byte of every candidate. */
static __always_inline int argv_fp_at(struct argv_scan *s, struct argv_fp *fp, u32 pos)
{
    if (fp->len < 4 || fp->len > ARGV_FP_LEN || pos + 1 < fp->len)
        return 0;
    u32 diff = 0;
#pragma unroll
    for (u32 k = 0; k < ARGV_FP_LEN; k++)
        diff |= (s->buf[(pos - k) & (ARGV_RING - 1)] ^ fp->s[ARGV_FP_LEN - 1 - k]) & fp->m[ARGV_FP_LEN - 1 - k];
    return diff == 0;
}

static __always_inline void argv_verify_hits(struct argv_scan *s)
{
    u32 nh = s->nhits;
    for (u32 h = 0; h < ARGV_HITS; h++) {
        if (h >= nh)
            break;
        struct argv_hit hit = s->hits[h];
        struct argv_cands *c = argv_anchors.lookup(&hit.win);
        if (!c)
            continue;
        for (u32 j = 0; j < ARGV_ANCHOR_CANDS; j++) {
            if (j >= c->n)
                break;
            u32 id = c->id[j] & (ARGV_FP_MAX - 1);
            struct argv_fp *fp = argv_fps.lookup(&id);
            if (fp && argv_fp_at(s, fp, hit.pos))
                s->found |= 1ULL << id;
        }
    }
    s->nhits = 0;
}

static __always_inline int argv_rule_matches(struct argv_rule *r, struct argv_scan *s, u64 comms)
{
    if (!r->all && !r->any && !r->opts)
        return 0;
    if (r->comms && !(r->comms & comms))
        return 0;
    if (r->opts && !(r->opts & s->opts))
        return 0;
    if (r->any && !(r->any & s->found))
        return 0;
    return (r->all & s->found) == r->all;
}

/* The scan is complete (or bounded): the first matching entry of the nearest scope kills. */
static __always_inline void argv_decide(struct argv_scan *s)
{
    struct argv_comm c = {};
    bpf_get_current_comm(&c.comm, sizeof(c.comm));
    u64 *sets = argv_comms.lookup(&c);
    u64 comms = sets ? *sets : 0;
    for (int level = 0; level < MAX_CGROUP_LEVELS; level++) {
        u64 scope = bpf_get_current_ancestor_cgroup_id(level);
        if (!scope)
            break;
        struct argv_rules *rs = argv_kill.lookup(&scope);
        if (!rs)
            continue;
        for (u32 i = 0; i < ARGV_RULES; i++) {
            if (i >= rs->n)
                break;
            if (!argv_rule_matches(&rs->r[i], s, comms))
                continue;
            if (task_exempt())
                return;                     /* monitor mode: user space alerts from the exec record */
            bpf_send_signal(9);
            report_kill(ACT_KILL_EXEC, rs->r[i].rule, 0);
            return;
        }
    }
}

/* Two programs take turns, each verified on its own (one program holding both was out of the verifier's reach):
 * argv_scan_piece reads and scans one piece, recording anchor hits; argv_check_piece verifies them (the ring
 * still holds this piece and the one before), then hands over to the next piece or decides. */
int argv_scan_piece(void *ctx)
{
    u32 zero = 0;
    struct argv_scan *s = argv_scan_state.lookup(&zero);
    struct argv_table *tb = argv_table.lookup(&zero);
    struct argv_bitmap *bm = argv_anchor_bits.lookup(&zero);
    if (!s || !tb || !bm)
        return 0;
    s->nhits = 0;
    u64 left = s->end > s->p ? s->end - s->p : 0;
    s->n = left > ARGV_CHUNK ? ARGV_CHUNK : (u32)left;
    /* re-read from memory: the two ways to n (a full piece, the last one) stay one state for the verifier */
    u32 n = *(volatile u32 *)&s->n & (2 * ARGV_CHUNK - 1);
    u32 base = s->pos & ARGV_CHUNK;         /* pieces alternate between the two halves of the ring */
    if (!n || bpf_probe_read_user(&s->buf[base], n, (void *)s->p) != 0) {
        s->found |= ARGV_UNINSPECTABLE;
        s->p = s->end;                      /* nothing more to read: the check decides */
        argv_scan_next.call(ctx, ARGV_CHECK);
        return 0;
    }
    u64 state = s->state & 3, win = s->win, opts = s->opts;
    u32 pos0 = s->pos;
    /* The hit count lives in map memory and n is re-read after the loop: a register the verifier knows exactly
     * (nh <= i, n <= i) would make every exit from the loop a different state. Branch-free inside: a branch per
     * byte would leave the verifier a pending state per byte (its limit is 8192). */
    for (u32 i = 0; i < ARGV_CHUNK; i++) {
        if (i >= *(volatile u32 *)&s->n)    /* from memory: clang would fold min(n, ARGV_CHUNK) into two loops */
            break;
        u32 at = base + i;
        asm volatile("" : "+r"(at));        /* keep the mask: clang drops it, the verifier needs it */
        at &= ARGV_RING - 1;
        u64 t = tb->t[(state << 8) | s->buf[at]];
        state = (t >> ARGV_T_STATE) & 3;
        opts |= t & ARGV_T_LETTERS;
        u64 f = t >> ARGV_T_FOLDED;
        s->buf[at] = f;
        win = ((win << 8) | f) & 0xffffffff;
        u64 h = ((win * ARGV_HASH_MUL) >> 16) & 0xffff;
        u32 hit = (bm->w[h >> 6] >> (h & 63)) & 1;
        u32 nh = s->nhits;                  /* a hit past ARGV_HITS lands in the spare half of hits[], counted */
        u32 slot = ((nh & (ARGV_HITS - 1)) | (((ARGV_HITS - 1 - nh) >> 31) * ARGV_HITS)) & (2 * ARGV_HITS - 1);
        s->hits[slot].pos = pos0 + i;
        s->hits[slot].win = win;
        s->nhits = nh + hit;
    }
    if (s->nhits > ARGV_HITS) {
        s->found |= ARGV_UNINSPECTABLE;                   /* anchor stuffing: say so, never skip silently */
        s->nhits = ARGV_HITS;
    }
    s->state = state;
    s->win = win;
    s->opts = opts;
    s->pos += s->n;
    s->p += s->n;
    argv_scan_next.call(ctx, ARGV_CHECK);
    return 0;
}

int argv_check_piece(void *ctx)
{
    u32 zero = 0;
    struct argv_scan *s = argv_scan_state.lookup(&zero);
    if (!s)
        return 0;
    argv_verify_hits(s);
    if (s->p < s->end && s->pos < ARGV_SCAN_MAX)
        argv_scan_next.call(ctx, ARGV_SCAN);
    if (s->p < s->end)
        s->found |= ARGV_UNINSPECTABLE;     /* beyond ARGV_SCAN_MAX */
    argv_decide(s);
    return 0;
}

/* Attached to sched_process_exec: only execs under a scope with argv_kill entries are scanned. */
int kill_by_argv(void *ctx)
{
    u32 zero = 0;
    u32 *on = argv_config.lookup(&zero);
    if (!on || !*on)
        return 0;
    int scoped = 0;
    for (int level = 0; level < MAX_CGROUP_LEVELS; level++) {
        u64 scope = bpf_get_current_ancestor_cgroup_id(level);
        if (!scope)
            break;
        if (argv_kill.lookup(&scope)) {
            scoped = 1;
            break;
        }
    }
    if (!scoped)
        return 0;                           /* every exec outside the scopes stops here */
    struct argv_scan *s = argv_scan_state.lookup(&zero);
    u64 mm = kread_u64((void *)bpf_get_current_task(), OFF_TASK_MM);
    if (!s || !mm)
        return 0;
    s->p = kread_u64((void *)mm, OFF_MM_ARG_START);
    s->end = kread_u64((void *)mm, OFF_MM_ARG_END);
    s->opts = 0;
    s->found = 0;
    s->pos = 0;
    s->win = 0;
    s->state = 0;
    s->nhits = 0;
    argv_scan_next.call(ctx, ARGV_SCAN);
    return 0;
}
