/* enforce_payload.c - protocol fingerprints in the first payload bytes, seen (and dropped) on the wire.
 *
 * cgroup_skb/egress, attached by the agent to job cgroups in scope. Rules are data
 * (PayloadWatch in the policy, one fingerprint each), not code per tool:
 * - the stratum scan: a JSON object naming a mining method ("mining.*", "login", "eth_submit*",
 *   "eth_getWork", "getwork", "getblock*"), whatever the port, also after a SOCKS or HTTP CONNECT handshake;
 * - a byte pattern (<= 16 bytes, with a mask: 0xdf on a letter = case-insensitive) at any
 *   offset of a window, with a minimum payload length: an SSH banner from a process that is
 *   not an SSH client, a SOCKS4/5 CONNECT, a WebSocket upgrade naming a tunnel subprotocol,
 *   a tunnel tool's hello frame.
 * Only the first FLOW_INSPECT packets with payload of each socket are looked at (a
 * per-socket-cookie counter in an LRU map): an established bulk flow costs one map lookup
 * per packet, an ACK a header parse. Per (scope, fingerprint) the mode is monitor (report)
 * or enforce (drop the packet and every later one of the flow; the agent kills the sender).
 * Senders named in a fingerprint's exemptions (by comm or by executable) never match it. */
#include "gpuguard.h"

#define FLOW_INSPECT 4           /* packets with payload looked at per flow: SOCKS5 + auth + CONNECT + data */
#define PAYLOAD_BUF 512          /* power of two: offsets are masked into it */
#define FP_MAX 16                /* fingerprints in one policy */
#define FP_LEN 16                /* bytes compared per fingerprint */
#define FP_NEAR 8                /* offsets tried directly per fingerprint; wider windows go through anchors */
#define FP_WINDOW_MAX 496        /* PAYLOAD_BUF - FP_LEN */
#define ANCHOR_FOLD 0xdfdfdfdfU  /* anchors compare case-folded (the full compare is exact, per mask) */
#define STRATUM_SCAN 192         /* bytes of payload the stratum scan reads */
#define MODE_MONITOR 1
#define MODE_ENFORCE 2
#define FP_STRATUM 1             /* fingerprint flag: the stratum JSON scan instead of bytes */
#define FLOW_DROPPED 0x80000000U /* in payload_flows: every later packet of the flow is dropped too */

struct fingerprint {
    u8 pattern[FP_LEN];
    u8 mask[FP_LEN];             /* 0 beyond the pattern's length: those bytes always compare equal */
    u32 offset_min;
    u32 offset_max;
    u32 min_len;
    u32 flags;
};

struct payload_scope_key {
    u64 scope;                   /* cgroup id */
    u32 fp;
    u32 _pad;
};

struct payload_scope {
    u32 mode;
    u32 rule;
};

struct fp_comm_key {
    u32 fp;
    char comm[TASK_COMM_LEN];
};

struct fp_exe_key {
    u32 fp;
    u32 dev;
    u64 ino;
};

struct fp_config {
    u32 count;                   /* slots in use */
    u32 windowed;                /* 1: some fingerprint has a window wider than FP_NEAR (anchors are set) */
    u32 stratum_slot;            /* slot + 1 of the stratum scan, 0: none */
};

BPF_ARRAY(fingerprints, struct fingerprint, FP_MAX);
BPF_ARRAY(fingerprint_config, struct fp_config, 1);
/* Wide windows: pattern bytes [d, d+4) case-folded -> slot | d << 8, for d = 0..3. One lookup at
 * every 4th payload offset finds the candidates (the verifier would not accept every offset of
 * every fingerprint). */
BPF_HASH(fp_anchors, u32, u32, 4 * FP_MAX);
BPF_HASH(payload_scopes, struct payload_scope_key, struct payload_scope, 4096);
BPF_HASH(fp_exempt_comms, struct fp_comm_key, u32, 1024);
BPF_HASH(fp_exempt_exes, struct fp_exe_key, u32, 1024);
BPF_TABLE("lru_hash", u64, u32, payload_flows, 65536);        /* socket cookie -> packets inspected */

/* The first FLOW_PREFIX bytes a flow sent, across its packets: each inspected packet is matched as the flow's
 * prefix followed by its own bytes, so a handshake split 1+N, or two protocol steps merged into one send
 * (SOCKS greeting + CONNECT), is seen as the stream it is. reported: fingerprints already reported for the
 * flow (a prefix that matched once is not reported again). */
#define FLOW_PREFIX 64
#define PREFIX_CARRY 8           /* a prefix is carried only while the flow has sent fewer bytes than this: the
                                  * cut-up case (1+N, a greeting then its request); a later step after a longer
                                  * exchange (SOCKS5 auth, then CONNECT) is matched on its own packet */

struct flow_prefix {
    u32 len;
    u32 reported;
    u8 b[FLOW_PREFIX];
};

BPF_TABLE("lru_hash", u64, struct flow_prefix, payload_prefixes, 65536);

struct payload {
    u8 b[FLOW_PREFIX + PAYLOAD_BUF + FP_LEN];  /* prefix, packet, slack for a 16-byte compare at the end */
    /* kept here, not in registers: a register the verifier knows exactly would make every
     * combination of hits a separate state (2^FP_MAX paths) */
    u32 hits;
    s32 stratum;                 /* -1 not scanned yet, else the scan's result */
    u32 exempt;                  /* the packet's job is in monitor mode */
    u32 drop;
};

BPF_PERCPU_ARRAY(payload_buf, struct payload, 1);

/* 1 when b holds a JSON object whose text contains one of the stratum method names. */
static __always_inline int looks_like_stratum(const u8 *b, u64 len)
{
    int start = 0;
    for (; start < 4; start++)
        if (b[start] != ' ' && b[start] != '\n' && b[start] != '\r' && b[start] != '\t')
            break;
    if (start >= 4 || b[start] != '{')
        return 0;
    for (int i = 1; i < STRATUM_SCAN - 16; i++) {
        if (i + 9 > len)
            break;
        if (b[i] != '"')
            continue;
        /* "mining.   "login"   "eth_submitLogin" / "eth_submitWork" / "eth_getWork" */
        if (b[i + 1] == 'm' && b[i + 2] == 'i' && b[i + 3] == 'n' && b[i + 4] == 'i' && b[i + 5] == 'n' &&
            b[i + 6] == 'g' && b[i + 7] == '.')
            return 1;
        if (b[i + 1] == 'l' && b[i + 2] == 'o' && b[i + 3] == 'g' && b[i + 4] == 'i' && b[i + 5] == 'n' &&
            b[i + 6] == '"')
            return 1;
        if (b[i + 1] == 'e' && b[i + 2] == 't' && b[i + 3] == 'h' && b[i + 4] == '_' &&
            ((b[i + 5] == 's' && b[i + 6] == 'u' && b[i + 7] == 'b' && b[i + 8] == 'm') ||
             (b[i + 5] == 'g' && b[i + 6] == 'e' && b[i + 7] == 't' && b[i + 8] == 'W')))
            return 1;
        /* "getwork"   "getblocktemplate": solo mining against a node's JSON-RPC */
        if (b[i + 1] == 'g' && b[i + 2] == 'e' && b[i + 3] == 't' &&
            ((b[i + 4] == 'w' && b[i + 5] == 'o' && b[i + 6] == 'r' && b[i + 7] == 'k' && b[i + 8] == '"') ||
             (b[i + 4] == 'b' && b[i + 5] == 'l' && b[i + 6] == 'o' && b[i + 7] == 'c' && b[i + 8] == 'k')))
            return 1;
    }
    return 0;
}

/* The pattern at offset off of b: two masked 8-byte compares. */
static __always_inline int bytes_at(const u8 *b, u32 off, struct fingerprint *fp)
{
    off &= PAYLOAD_BUF - 1;
    u64 w0 = *(u64 *)(b + off), w1 = *(u64 *)(b + off + 8);
    return (w0 & *(u64 *)&fp->mask[0]) == *(u64 *)&fp->pattern[0] &&
           (w1 & *(u64 *)&fp->mask[8]) == *(u64 *)&fp->pattern[8];
}

/* A fingerprint whose window is at most FP_NEAR wide, tried at each of its offsets. */
static __always_inline int near_match(const u8 *b, u64 len, struct fingerprint *fp)
{
    if (fp->offset_max - fp->offset_min >= FP_NEAR)
        return 0;
#pragma unroll
    for (u32 i = 0; i < FP_NEAR; i++) {
        u32 off = fp->offset_min + i;
        if (off > fp->offset_max || off >= len)
            break;
        if (bytes_at(b, off, fp))
            return 1;
    }
    return 0;
}

/* Exempt by the sender's comm; by its executable only when the sender is the current task (its mm is at hand). */
static __always_inline int sender_exempt(u32 fp, const char *comm, int sender_is_current)
{
    struct fp_comm_key ck = {.fp = fp};
    __builtin_memcpy(ck.comm, comm, TASK_COMM_LEN);
    if (fp_exempt_comms.lookup(&ck))
        return 1;
    if (!sender_is_current)
        return 0;
    struct fp_exe_key ek = {.fp = fp};
    current_exe(&ek.dev, &ek.ino);
    return ek.ino && fp_exempt_exes.lookup(&ek) != 0;
}

/* The mode of fingerprint fp for this packet's cgroup: the first scope among its ancestors; every
 * level is walked, since a job in monitor mode is exempted below the scope (at the job's cgroup). */
static __always_inline struct payload_scope *scope_of(struct __sk_buff *skb, u32 fp, u32 *exempt)
{
    struct payload_scope_key k = {.fp = fp};
    struct payload_scope *found = 0;
    for (int level = 0; level < MAX_CGROUP_LEVELS; level++) {
        u64 id = bpf_skb_ancestor_cgroup_id(skb, level);
        if (!id)
            break;
        if (exempt_scopes.lookup(&id))
            *exempt = 1;
        if (!found) {
            k.scope = id;
            found = payload_scopes.lookup(&k);
        }
    }
    return found;
}

int payload_egress(struct __sk_buff *skb)
{
    u32 payload_off = 0;
    u8 family = 0;
    u8 daddr[16] = {};
    if (skb->protocol == bpf_htons(0x0800)) {
        u8 vihl = 0, proto = 0;
        if (bpf_skb_load_bytes(skb, 0, &vihl, 1) || bpf_skb_load_bytes(skb, 9, &proto, 1))
            return 1;
        if (proto != 6)
            return 1;
        payload_off = (vihl & 0xf) * 4;
        daddr[10] = 0xff;
        daddr[11] = 0xff;
        bpf_skb_load_bytes(skb, 16, &daddr[12], 4);
        family = 2;
    } else if (skb->protocol == bpf_htons(0x86DD)) {
        u8 next = 0;
        if (bpf_skb_load_bytes(skb, 6, &next, 1) || next != 6)
            return 1;
        payload_off = 40;
        bpf_skb_load_bytes(skb, 24, daddr, 16);
        family = 10;
    } else {
        return 1;
    }
    u8 doff = 0;
    u16 dport = 0;
    if (bpf_skb_load_bytes(skb, payload_off + 12, &doff, 1) ||
        bpf_skb_load_bytes(skb, payload_off + 2, &dport, 2))
        return 1;
    payload_off += (doff >> 4) * 4;
    if (payload_off >= skb->len)
        return 1;   /* no payload: ACK, SYN, FIN */
    u32 payload_len = skb->len - payload_off;

    u64 cookie = bpf_get_socket_cookie(skb);
    u32 *seen = payload_flows.lookup(&cookie);
    if (seen && (*seen & FLOW_DROPPED))
        return 0;   /* a flow caught earlier: its retransmissions stay dropped */
    if (seen && *seen >= FLOW_INSPECT)
        return 1;   /* established flow: already inspected */
    u32 count = seen ? *seen + 1 : 1;
    payload_flows.update(&cookie, &count);

    u32 zero = 0;
    struct payload *pl = payload_buf.lookup(&zero);
    struct fp_config *cfg = fingerprint_config.lookup(&zero);
    if (!pl || !cfg || !cfg->count)
        return 1;
    pl->stratum = -1;
    u8 *buf = pl->b;
    __builtin_memset(buf, 0, FLOW_PREFIX + PAYLOAD_BUF + FP_LEN);
    struct flow_prefix fresh = {};
    struct flow_prefix *prefix = payload_prefixes.lookup(&cookie);
    if (!prefix) {
        payload_prefixes.update(&cookie, &fresh);
        prefix = payload_prefixes.lookup(&cookie);
        if (!prefix)
            return 1;
    }
    u32 plen = prefix->len;
    asm volatile("" : "+r"(plen));
    plen &= FLOW_PREFIX - 1;                      /* < 64: a full prefix stops growing (see below) */
    __builtin_memcpy(buf, prefix->b, FLOW_PREFIX);
    u64 len = payload_len > PAYLOAD_BUF ? PAYLOAD_BUF : payload_len;   /* >= 1: checked above */
    asm volatile("" : "+r"(len));
    len = ((len - 1) & (PAYLOAD_BUF - 1)) + 1;   /* the same value, in a form the verifier can bound */
    if (bpf_skb_load_bytes(skb, payload_off, buf + plen, len))
        return 1;
    if (prefix->len < FLOW_PREFIX) {              /* remember the stream's first bytes for the next packet */
        __builtin_memcpy(prefix->b, buf, FLOW_PREFIX);
        prefix->len = plen + len >= PREFIX_CARRY ? FLOW_PREFIX : plen + len;   /* FLOW_PREFIX: carry no more */
    }
    len = plen + len > PAYLOAD_BUF ? PAYLOAD_BUF : plen + len;
    payload_len += plen;

    /* phase 1: which fingerprints the payload matches */
    pl->hits = 0;
    if (cfg->stratum_slot && looks_like_stratum(buf, len))
        pl->hits |= 1U << ((cfg->stratum_slot - 1) & (FP_MAX - 1));
    for (u32 i = 0; i < FP_MAX; i++) {
        if (i >= cfg->count)
            break;
        u32 idx = i;
        struct fingerprint *fp = fingerprints.lookup(&idx);
        if (fp && !(fp->flags & FP_STRATUM) && payload_len >= fp->min_len && near_match(buf, len, fp))
            pl->hits |= 1U << i;
    }
    /* wide windows: every 4th offset, through the anchors (each fingerprint has one per shift 0-3) */
    if (cfg->windowed) {
        for (u32 off = 0; off < FP_WINDOW_MAX; off += 4) {
            if (off + 4 > len)
                break;
            u32 word = *(u32 *)(buf + off) & ANCHOR_FOLD;
            u32 *anchor = fp_anchors.lookup(&word);
            if (!anchor)
                continue;
            u32 idx = (*anchor & 0xff) & (FP_MAX - 1);
            u32 start = off - (*anchor >> 8);        /* where the pattern would begin */
            struct fingerprint *fp = fingerprints.lookup(&idx);
            if (fp && start <= off && start >= fp->offset_min && start <= fp->offset_max &&
                payload_len >= fp->min_len && bytes_at(buf, start, fp))
                pl->hits |= 1U << idx;
        }
    }
    u32 hits = pl->hits & ~prefix->reported;      /* a fingerprint is reported once per flow */
    if (!hits)
        return 1;
    prefix->reported |= hits;

    /* phase 2: for each hit, the scope's mode and the sender's exemptions; report, maybe drop */
    struct event_header sender = {};
    int sender_is_current = packet_sender(skb, &sender);   /* the socket's owner: TCP may send from softirq */
    pl->drop = 0;
    for (u32 i = 0; i < FP_MAX; i++) {
        if (!(hits & (1U << i)))
            continue;
        u32 idx = i;
        struct fingerprint *fp = fingerprints.lookup(&idx);
        if (!fp)
            continue;
        pl->exempt = 0;
        struct payload_scope *scope = scope_of(skb, i, &pl->exempt);
        if (!scope || sender_exempt(i, sender.comm, sender_is_current))
            continue;
        u32 mode = pl->exempt ? MODE_MONITOR : scope->mode;
        int is_stratum = fp->flags & FP_STRATUM;
        struct enforce_event e = {};
        e.hdr.ts_ns = bpf_ktime_get_boot_ns();
        e.hdr.cgroup_id = bpf_skb_cgroup_id(skb);
        e.hdr.kind = EV_ENFORCE;
        e.hdr.tid = sender.tid;
        e.hdr.tgid = sender.tgid;
        __builtin_memcpy(e.hdr.comm, sender.comm, TASK_COMM_LEN);
        if (mode == MODE_ENFORCE)
            e.action = is_stratum ? ACT_DROP_STRATUM : ACT_DROP_PAYLOAD;
        else
            e.action = is_stratum ? ACT_SEEN_STRATUM : ACT_SEEN_PAYLOAD;
        e.rule = scope->rule;
        e.family = family;
        e.dport = bpf_ntohs(dport);
        __builtin_memcpy(e.daddr, daddr, 16);
        e.payload_len = len < PAYLOAD_EXCERPT ? len : PAYLOAD_EXCERPT;
        __builtin_memcpy(e.payload, buf, PAYLOAD_EXCERPT);
        emit(&e, sizeof(e), EV_ENFORCE);
        if (mode == MODE_ENFORCE)
            pl->drop = 1;
    }
    if (!pl->drop)
        return 1;
    u32 dropped = FLOW_DROPPED;
    payload_flows.update(&cookie, &dropped);
    return 0;
}
