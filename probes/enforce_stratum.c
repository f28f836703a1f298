/* enforce_stratum.c - see (and drop) stratum mining handshakes on the wire.
 *
 * cgroup_skb/egress, attached by the agent to job cgroups in scope. A miner
 * speaks first: its first payload bytes are a JSON-RPC object with a "method"
 * of mining.* (subscribe/authorize/...), "login" (Monero-style) or
 * eth_submitLogin. The hook looks only at the first STRATUM_INSPECT payload
 * packets of each socket (a per-socket-cookie counter in an LRU map): after
 * that, an established bulk flow costs one map lookup per packet. Packets
 * without payload (ACKs) cost a header parse. Mode per scope: monitor
 * reports, enforce also drops (returns 0, the packet never leaves). */
#include "gpuguard.h"

#define STRATUM_INSPECT 3
#define STRATUM_SCAN 192   /* bytes of payload scanned */
#define STRATUM_BUF 256    /* power of two >= STRATUM_SCAN + 16 */
#define MODE_MONITOR 1
#define MODE_ENFORCE 2
#define FLOW_DROPPED 0x80000000U   /* set in stratum_seen: every later packet of the flow is dropped too */

struct stratum_scope {
    u32 mode;
    u32 rule;
};

BPF_HASH(stratum_scopes, u64, struct stratum_scope, 1024);    /* scope cgroup id -> mode */
BPF_TABLE("lru_hash", u64, u32, stratum_seen, 65536);         /* socket cookie -> packets inspected */
struct payload {
    char b[STRATUM_BUF];
};

BPF_PERCPU_ARRAY(stratum_buf, struct payload, 1);

/* 1 when buf holds a JSON object whose text contains one of the stratum method names. */
static __always_inline int looks_like_stratum(const char *b, u32 len)
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
        char c = b[i];
        if (c != '"')
            continue;
        /* "mining.   "login"   "eth_submitLogin" */
        if (b[i + 1] == 'm' && b[i + 2] == 'i' && b[i + 3] == 'n' && b[i + 4] == 'i' && b[i + 5] == 'n' &&
            b[i + 6] == 'g' && b[i + 7] == '.')
            return 1;
        if (b[i + 1] == 'l' && b[i + 2] == 'o' && b[i + 3] == 'g' && b[i + 4] == 'i' && b[i + 5] == 'n' &&
            b[i + 6] == '"')
            return 1;
        if (b[i + 1] == 'e' && b[i + 2] == 't' && b[i + 3] == 'h' && b[i + 4] == '_' && b[i + 5] == 's' &&
            b[i + 6] == 'u' && b[i + 7] == 'b' && b[i + 8] == 'm')
            return 1;
    }
    return 0;
}

int stratum_egress(struct __sk_buff *skb)
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

    u64 cookie = bpf_get_socket_cookie(skb);
    u32 *seen = stratum_seen.lookup(&cookie);
    if (seen && (*seen & FLOW_DROPPED))
        return 0;   /* a flow caught earlier: its retransmissions stay dropped */
    if (seen && *seen >= STRATUM_INSPECT)
        return 1;   /* established flow: already inspected */
    u32 count = seen ? *seen + 1 : 1;
    stratum_seen.update(&cookie, &count);

    struct stratum_scope *scope = 0;
    int exempt = 0;
    for (int level = 0; level < MAX_CGROUP_LEVELS; level++) {
        u64 id = bpf_skb_ancestor_cgroup_id(skb, level);
        if (!id)
            break;
        if (exempt_scopes.lookup(&id))
            exempt = 1;
        if (!scope)
            scope = stratum_scopes.lookup(&id);
    }
    if (!scope)
        return 1;
    u32 mode = exempt ? MODE_MONITOR : scope->mode;

    u32 zero = 0;
    struct payload *pl = stratum_buf.lookup(&zero);
    if (!pl)
        return 1;
    char *buf = pl->b;
    /* constant-size loads (the verifier wants a provable size): the largest
     * chunk the packet holds; the method name sits in the first ~64 bytes. */
    __builtin_memset(buf, 0, STRATUM_BUF);
    u32 len = 0;
    if (!bpf_skb_load_bytes(skb, payload_off, buf, 192))
        len = 192;
    else if (!bpf_skb_load_bytes(skb, payload_off, buf, 128))
        len = 128;
    else if (!bpf_skb_load_bytes(skb, payload_off, buf, 96))
        len = 96;
    else if (!bpf_skb_load_bytes(skb, payload_off, buf, 64))
        len = 64;
    else if (!bpf_skb_load_bytes(skb, payload_off, buf, 32))
        len = 32;
    else
        return 1;
    if (!looks_like_stratum(buf, len))
        return 1;

    struct enforce_event e = {};
    e.hdr.ts_ns = bpf_ktime_get_boot_ns();
    e.hdr.cgroup_id = bpf_skb_cgroup_id(skb);
    e.hdr.kind = EV_ENFORCE;
    u64 pt = bpf_get_current_pid_tgid();
    e.hdr.tid = (u32)pt;
    e.hdr.tgid = pt >> 32;
    bpf_get_current_comm(&e.hdr.comm, sizeof(e.hdr.comm));
    e.action = mode == MODE_ENFORCE ? ACT_DROP_STRATUM : ACT_SEEN_STRATUM;
    e.rule = scope->rule;
    e.family = family;
    e.dport = bpf_ntohs(dport);
    __builtin_memcpy(e.daddr, daddr, 16);
    emit(&e, sizeof(e), EV_ENFORCE);
    if (mode != MODE_ENFORCE)
        return 1;
    u32 dropped = FLOW_DROPPED;
    stratum_seen.update(&cookie, &dropped);
    return 0;
}
