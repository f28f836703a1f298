/* flow.c - whom a flow is for, seen on the wire; and sockets that bypass connect().
 *
 * cgroup_skb programs attached observe-only (they return 1) at the cgroup2 root see every packet of
 * every socket on the host, with the socket's cgroup (bpf_skb_cgroup_id). They copy out only the few
 * packets that name a destination, for the agent to parse (agent/flows.py):
 * - egress, TCP: a TLS ClientHello (record type 22, handshake type 1: SNI, ALPN, JA4 fingerprint);
 * - egress, TCP or UDP to port 53: a DNS query (the name and its shape);
 * - egress, UDP: the first FLOW_UDP_FIRST_MAX datagrams of each socket (WireGuard/OpenVPN handshakes,
 *   stratum over UDP, QUIC Initials), counted per socket cookie in an LRU map;
 * - ingress, TCP or UDP from port 53: a DNS answer. It is queued to the socket only after this program
 *   ran, so the agent learns address -> name (per job) before the resolving process can connect;
 * - ingress, UDP from off the node: the first datagram from each peer that the receiving socket never sent
 *   to (who reaches a job over UDP: a WireGuard or tunnel endpoint, a UDP shell). Replies to a socket's own
 *   sends (DNS, QUIC, NTP clients) are not reported: egress marks each (socket, peer) it sends to.
 * Everything else costs a header parse. cgroup/sock_create sees raw IP and ICMP sockets of every job
 * (inet_create) and refuses them (EPERM) in the scopes a policy lists in deny_socket_scopes (gpuguard.h: the
 * enforcer writes it). AF_PACKET sockets never pass that hook: they are seen at their first send or receive
 * (packet_use below). */
#include "gpuguard.h"

#define FLOW_UDP_FIRST_MAX 2
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define SOCK_RAW_ 3
#define IPPROTO_ICMP_ 1
#define IPPROTO_ICMPV6_ 58
#define AF_PACKET_ 17

BPF_PERCPU_ARRAY(flow_scratch, struct flow_event, 1);
BPF_TABLE("lru_hash", u64, u32, udp_flows, 65536);       /* socket cookie -> datagrams reported */
struct udp_peer {
    u64 cookie;                    /* the job's socket */
    u8 addr[16];                   /* the peer (v4 as v4-mapped) */
    u32 port;
};
#define UDP_PEER_SENT 1            /* the socket sent to this peer: what comes back is a reply */
#define UDP_PEER_REPORTED 2        /* the peer reached the socket first and was reported */
BPF_TABLE("lru_hash", struct udp_peer, u32, udp_peers, 65536);

/* The L4 header of the packet: protocol, ports, payload offset and length. 0: not TCP/UDP over IP, not from
 * the remote port the caller wants (want_rport, 0: any), or no payload. Two loads per packet (the IP header, the
 * L4 header's first 13 bytes): these hooks run on every packet of every job. */
static __always_inline int l4_of(struct __sk_buff *skb, struct flow_event *e, int egress, u16 want_rport,
                                 u32 *payload_off)
{
    u32 off = 0;
    u8 proto = 0;
    if (skb->protocol == bpf_htons(0x0800)) {
        u8 ip[20];
        if (bpf_skb_load_bytes(skb, 0, ip, 20))
            return 0;
        proto = ip[9];
        if (proto != IPPROTO_UDP_ && proto != IPPROTO_TCP_)
            return 0;
        off = (ip[0] & 0xf) * 4;
        e->family = 2;
        __builtin_memset(e->raddr, 0, 16);
        e->raddr[10] = 0xff;
        e->raddr[11] = 0xff;
        __builtin_memcpy(&e->raddr[12], egress ? &ip[16] : &ip[12], 4);
    } else if (skb->protocol == bpf_htons(0x86DD)) {
        u8 ip[40];
        if (bpf_skb_load_bytes(skb, 0, ip, 40))
            return 0;
        proto = ip[6];
        if (proto != IPPROTO_UDP_ && proto != IPPROTO_TCP_)
            return 0;
        off = 40;
        e->family = 10;
        __builtin_memcpy(e->raddr, egress ? &ip[24] : &ip[8], 16);
    } else {
        return 0;
    }
    u8 l4[13] = {};                /* ports, then (TCP) the data offset at byte 12 */
    if (bpf_skb_load_bytes(skb, off, l4, proto == IPPROTO_TCP_ ? 13 : 4))
        return 0;
    u16 sport = ((u16)l4[0] << 8) | l4[1], dport = ((u16)l4[2] << 8) | l4[3];
    e->rport = egress ? dport : sport;
    if (want_rport && e->rport != want_rport)
        return 0;
    e->lport = egress ? sport : dport;
    e->proto = proto;
    off += proto == IPPROTO_TCP_ ? (l4[12] >> 4) * 4 : 8;
    if (off >= skb->len)
        return 0;                  /* no payload: ACK, SYN, FIN */
    *payload_off = off;
    e->len = skb->len - off;
    return 1;
}

static __always_inline void emit_flow(struct __sk_buff *skb, struct flow_event *e, u32 off, u32 what, int egress)
{
    e->what = what;
    e->hdr.ts_ns = bpf_ktime_get_boot_ns();
    e->hdr.cgroup_id = bpf_skb_cgroup_id(skb);
    e->hdr.kind = EV_FLOW;
    e->hdr.result = 0;
    e->hdr.uid = e->hdr.gid = 0;
    if (egress) {
        packet_sender(skb, &e->hdr);         /* the socket's owner, not whatever task is current */
    } else {                                  /* an answer arrives in softirq: its receiver is not known here */
        no_process(&e->hdr);
    }
    e->cookie = bpf_get_socket_cookie(skb);
    u64 len = e->len > FLOW_DATA ? FLOW_DATA : e->len;     /* >= 1: l4_of saw a payload */
    asm volatile("" : "+r"(len));
    len = ((len - 1) & (FLOW_DATA - 1)) + 1;
    if (bpf_skb_load_bytes(skb, off, e->data, len))
        return;
    emit(e, sizeof(*e), EV_FLOW);
}

/* ---- learning allowed addresses from DNS answers (egress by name, see gpuguard.h) ---- */
#define FNV_PRIME 0x100000001b3ULL
#define DNS_MAX_NAME 256
#define DNS_MAX_LABELS 32
#define DNS_MAX_ANSWERS 8
#define NAME_TTL_MIN_S 60
#define NAME_TTL_MAX_S 86400
#define DNSB(i) (e->data[(i) & (FLOW_DATA - 1)])

struct name_scratch {
    u8 boundary[DNS_MAX_NAME];     /* 1 where a label starts in the question name */
    u64 hash;
    u32 pos;
    u32 allowed;
    u32 left;                      /* bytes of the name still to hash: in memory, so every turn of the byte
                                    * loop looks alike to the verifier (a register would carry its range) */
    u32 cursor;                    /* the extension walk's offset, in memory for the same reason */
};
BPF_PERCPU_ARRAY(name_scratch_buf, struct name_scratch, 1);

/* The first ancestor of the socket's cgroup whose egress policy lists names. */
static __always_inline u64 name_scope_of(struct __sk_buff *skb)
{
    for (int level = 0; level < MAX_CGROUP_LEVELS; level++) {
        u64 id = bpf_skb_ancestor_cgroup_id(skb, level);
        if (!id)
            return 0;
        if (name_scopes.lookup(&id))
            return id;
    }
    return 0;
}

/* Is a suffix of the question name (at a label boundary) allowed in scope? The name is hashed backwards,
 * byte by byte (lower case), from its end; at each label start the hash so far is that suffix's. */
static __always_inline int question_allowed(struct flow_event *e, struct name_scratch *ns, u32 base, u64 scope)
{
    u32 pos = base + 12, len = 0;
    __builtin_memset(ns->boundary, 0, DNS_MAX_NAME);
    for (int i = 0; i < DNS_MAX_LABELS; i++) {
        u32 n = DNSB(pos);
        if (n == 0)
            break;
        if (n > 63 || len + n + 1 >= DNS_MAX_NAME - 1)
            return 0;                       /* compression or an oversized name in a question: not ours */
        ns->boundary[len & (DNS_MAX_NAME - 1)] = 1;
        len += n + 1;
        pos += n + 1;
    }
    if (DNSB(pos) != 0 || len == 0)
        return 0;
    ns->pos = pos + 5;                      /* after the root label, QTYPE and QCLASS */
    u64 *key = name_hash_key.lookup(&(u32){0});
    ns->hash = key ? *key : 0;
    ns->allowed = 0;
    struct name_key k = {.scope = scope};
    ns->left = len;
    for (int j = 0; j < DNS_MAX_NAME - 1; j++) {
        u32 i = ns->left;
        if (i == 0 || i >= DNS_MAX_NAME)
            break;
        i -= 1;
        ns->left = i;
        u8 c = DNSB(base + 12 + i);
        if (c >= 'A' && c <= 'Z')
            c += 32;
        ns->hash = (ns->hash ^ c) * FNV_PRIME;
        u32 bi = i;
        asm volatile("" : "+r"(bi));       /* keep the mask: clang drops it, the verifier needs it */
        bi &= DNS_MAX_NAME - 1;
        if (ns->boundary[bi]) {
            k.hash = ns->hash;
            if (allowed_names.lookup(&k)) {
                ns->allowed = 1;
                break;
            }
        }
    }
    return ns->allowed;
}

/* Step over a (possibly compressed) name in an answer record. Returns the offset after it, 0 if malformed. */
static __always_inline u32 skip_name(struct flow_event *e, u32 pos)
{
    for (int i = 0; i < DNS_MAX_LABELS; i++) {
        u32 n = DNSB(pos);
        if (n == 0)
            return pos + 1;
        if ((n & 0xC0) == 0xC0)
            return pos + 2;
        if (n > 63)
            return 0;
        pos += n + 1;
    }
    return 0;
}

/* A trusted resolver's answer to a job in a name-policy scope, for an allowed name: each A/AAAA record's
 * address becomes reachable from that scope until max(TTL, a minute) has passed. */
static __always_inline void learn_allowed(struct __sk_buff *skb, struct flow_event *e)
{
    struct resolver_key rk = {};
    __builtin_memcpy(rk.addr, e->raddr, 16);
    if (!trusted_resolvers.lookup(&rk))
        return;
    u64 scope = name_scope_of(skb);
    if (!scope)
        return;
    u32 zero = 0;
    struct name_scratch *ns = name_scratch_buf.lookup(&zero);
    if (!ns)
        return;
    u32 base = e->proto == IPPROTO_TCP_ ? 2 : 0;   /* DNS over TCP: a 2-byte length first */
    u32 len = e->len > FLOW_DATA ? FLOW_DATA : e->len;
    if (len < base + 12 || !(DNSB(base + 2) & 0x80) || DNSB(base + 5) != 1 || DNSB(base + 4) != 0)
        return;                            /* not a response with exactly one question */
    u32 answers = DNSB(base + 7) | DNSB(base + 6) << 8;
    if (!question_allowed(e, ns, base, scope))
        return;
    u64 now = bpf_ktime_get_boot_ns();
    struct name_addr_key ak = {.scope = scope};
    for (int a = 0; a < DNS_MAX_ANSWERS; a++) {
        if ((u32)a >= answers)
            break;
        u32 pos = skip_name(e, ns->pos);
        if (!pos || pos + 10 > len)
            break;
        u32 type = DNSB(pos) << 8 | DNSB(pos + 1);
        u32 ttl = DNSB(pos + 4) << 24 | DNSB(pos + 5) << 16 | DNSB(pos + 6) << 8 | DNSB(pos + 7);
        u32 rdlen = DNSB(pos + 8) << 8 | DNSB(pos + 9);
        pos += 10;
        ns->pos = pos + rdlen;
        if (pos + rdlen > len)
            break;
        if (type == 1 && rdlen == 4) {
            __builtin_memset(ak.addr, 0, 16);
            ak.addr[10] = ak.addr[11] = 0xff;
            for (int b = 0; b < 4; b++)
                ak.addr[12 + b] = DNSB(pos + b);
        } else if (type == 28 && rdlen == 16) {
            for (int b = 0; b < 16; b++)
                ak.addr[b] = DNSB(pos + b);
        } else {
            continue;                      /* CNAME and others: the policy follows the question name */
        }
        if (ttl < NAME_TTL_MIN_S)
            ttl = NAME_TTL_MIN_S;
        if (ttl > NAME_TTL_MAX_S)
            ttl = NAME_TTL_MAX_S;
        u64 expiry = now + (u64)ttl * 1000000000ULL;
        name_addrs.update(&ak, &expiry);
    }
}

/* ---- TLS to an address allowed by name, with a server name that is not allowed: dropped ---- */
#define TLS_MAX_EXTENSIONS 24
#define SNI_MAX 128                  /* longer server names are not judged allowed (the verifier's budget) */
#define SNI_FOLD_NS 1000000000ULL

BPF_TABLE("lru_hash", u32, u64, sni_folds, 4096);       /* tgid -> last drop reported (one report a second) */

/* 1 when the scope's policy allows the ClientHello's server name (or the hello has none, or it lies beyond
 * the captured bytes: nothing to judge). The dotted name is hashed backwards like a DNS wire name: a dot
 * stands for the length of the label after it, so the suffix hashes match the ones of allowed names. */
static __always_inline int sni_allowed(struct flow_event *e, struct name_scratch *ns, u64 scope)
{
    u32 len = e->len > FLOW_DATA ? FLOW_DATA : e->len;
    u32 pos = 5 + 4 + 2 + 32;                  /* record header, handshake header, version, random */
    if (pos + 1 > len)
        return 1;
    pos += 1 + DNSB(pos);                      /* session id */
    if (pos + 2 > len)
        return 1;
    pos += 2 + (DNSB(pos) << 8 | DNSB(pos + 1));   /* cipher suites */
    if (pos + 1 > len)
        return 1;
    pos += 1 + DNSB(pos);                      /* compression methods */
    pos += 2;                                  /* extensions length */
    u32 name = 0, name_len = 0;
    ns->cursor = pos;
    for (int i = 0; i < TLS_MAX_EXTENSIONS; i++) {
        u32 at = ns->cursor;
        if (at + 4 > len)
            return 1;
        u32 type = DNSB(at) << 8 | DNSB(at + 1);
        u32 elen = DNSB(at + 2) << 8 | DNSB(at + 3);
        if (type == 0) {                       /* server_name: list length, name type, name length, name */
            name_len = DNSB(at + 7) << 8 | DNSB(at + 8);
            name = at + 9;
            break;
        }
        ns->cursor = at + 4 + elen;
    }
    if (!name || !name_len || name + name_len > len)
        return 1;
    if (name_len >= SNI_MAX)
        return 0;
    u64 *key = name_hash_key.lookup(&(u32){0});
    ns->hash = key ? *key : 0;
    ns->left = name_len;
    ns->pos = 0;                               /* characters of the current label, from its end */
    struct name_key k = {.scope = scope};
    for (int j = 0; j < SNI_MAX; j++) {
        u32 i = ns->left;
        if (i == 0 || i >= SNI_MAX)
            break;
        i -= 1;
        ns->left = i;
        u8 c = DNSB(name + i);
        if (c == '.') {
            ns->hash = (ns->hash ^ (ns->pos & 0xff)) * FNV_PRIME;
            ns->pos = 0;
            k.hash = ns->hash;
            if (allowed_names.lookup(&k))
                return 1;
            continue;
        }
        if (c >= 'A' && c <= 'Z')
            c += 32;
        ns->hash = (ns->hash ^ c) * FNV_PRIME;
        ns->pos += 1;
    }
    ns->hash = (ns->hash ^ (ns->pos & 0xff)) * FNV_PRIME;    /* the first label's length */
    k.hash = ns->hash;
    return allowed_names.lookup(&k) != 0;
}

/* Returns 0 (drop) for a ClientHello to an address a name policy allowed by name, naming a server it does not
 * allow (domain fronting, a pool behind an allowed CDN); reports the drop once a second per process. */
static __always_inline int sni_verdict(struct __sk_buff *skb, struct flow_event *e)
{
    u64 scope = name_scope_of(skb);
    if (!scope)
        return 1;
    struct name_addr_key ak = {.scope = scope};
    __builtin_memcpy(ak.addr, e->raddr, 16);
    if (!name_addrs.lookup(&ak))
        return 1;                              /* allowed by network, or not at all (connect decided) */
    u32 zero = 0;
    struct name_scratch *ns = name_scratch_buf.lookup(&zero);
    if (!ns || sni_allowed(e, ns, scope))
        return 1;
    for (int level = 0; level < MAX_CGROUP_LEVELS; level++) {     /* monitor mode: report only */
        u64 id = bpf_skb_ancestor_cgroup_id(skb, level);
        if (!id)
            break;
        if (exempt_scopes.lookup(&id))
            return 1;
    }
    u64 now = bpf_ktime_get_boot_ns();
    u32 tgid = e->hdr.tgid;
    u64 *last = sni_folds.lookup(&tgid);
    if (!last || now - *last >= SNI_FOLD_NS) {
        sni_folds.update(&tgid, &now);
        u32 *rule = name_scopes.lookup(&scope);
        struct enforce_event ev = {};
        __builtin_memcpy(&ev.hdr, &e->hdr, sizeof(ev.hdr));
        ev.hdr.kind = EV_ENFORCE;
        ev.hdr.result = -1;
        ev.action = ACT_DROP_PAYLOAD;
        ev.rule = rule ? *rule : 0;
        ev.family = e->family;
        ev.dport = e->rport;
        __builtin_memcpy(ev.daddr, e->raddr, 16);
        ev.payload_len = PAYLOAD_EXCERPT;
        __builtin_memcpy(ev.payload, e->data, PAYLOAD_EXCERPT);
        emit(&ev, sizeof(ev), EV_ENFORCE);
    }
    return 0;
}

static __always_inline void udp_peer_of(u64 cookie, struct flow_event *e, struct udp_peer *k)
{
    k->cookie = cookie;
    __builtin_memcpy(k->addr, e->raddr, 16);
    k->port = e->rport;
}

int flow_ingress(struct __sk_buff *skb)
{
    u32 zero = 0, off = 0;
    struct flow_event *e = flow_scratch.lookup(&zero);
    if (!e || !l4_of(skb, e, 0, 0, &off))
        return 1;
    if (e->rport == 53) {                              /* a DNS answer */
        emit_flow(skb, e, off, FLOW_DNS_ANSWER, 0);    /* copies the payload into e->data, then the ring */
        learn_allowed(skb, e);
        return 1;
    }
    if (e->proto != IPPROTO_UDP_ || on_node(e->raddr))
        return 1;
    struct udp_peer k = {};
    udp_peer_of(bpf_get_socket_cookie(skb), e, &k);
    if (udp_peers.lookup(&k))                          /* a reply to this socket's own send, or already reported */
        return 1;
    u32 reported = UDP_PEER_REPORTED;
    udp_peers.update(&k, &reported);
    emit_flow(skb, e, off, FLOW_UDP_INBOUND, 0);
    return 1;
}

int flow_egress(struct __sk_buff *skb)
{
    u32 zero = 0, off = 0;
    struct flow_event *e = flow_scratch.lookup(&zero);
    if (!e || !l4_of(skb, e, 1, 0, &off))
        return 1;
    u32 what = FLOW_UDP_FIRST;
    if (e->rport == 53) {
        what = FLOW_DNS_QUERY;
    } else if (e->proto == IPPROTO_TCP_) {
        u8 b[6] = {};
        if (e->len < 6 || bpf_skb_load_bytes(skb, off, b, 6))
            return 1;
        if (b[0] != 0x16 || b[1] != 0x03 || b[5] != 0x01)
            return 1;
        what = FLOW_TLS_HELLO;
    } else {
        u64 cookie = bpf_get_socket_cookie(skb);
        if (!on_node(e->raddr)) {                      /* what this peer sends back is a reply, not an approach */
            struct udp_peer k = {};
            udp_peer_of(cookie, e, &k);
            u32 *mark = udp_peers.lookup(&k);
            if (!mark || !(*mark & UDP_PEER_SENT)) {
                u32 sent = UDP_PEER_SENT | (mark ? *mark : 0);
                udp_peers.update(&k, &sent);
            }
        }
        u32 *seen = udp_flows.lookup(&cookie);
        if (seen && *seen >= FLOW_UDP_FIRST_MAX)
            return 1;
        u32 count = seen ? *seen + 1 : 1;
        udp_flows.update(&cookie, &count);
    }
    emit_flow(skb, e, off, what, 1);          /* one place: the sender lookup is inlined once */
    if (what == FLOW_TLS_HELLO)
        return sni_verdict(skb, e);            /* the hello is in e->data now */
    return 1;
}

/* Whether a policy refuses this kind of socket to the current task (and the task's job is not in monitor mode):
 * the event then names the rule and says EPERM. */
static __always_inline int socket_refused(struct socket_event *e, u32 kind)
{
    for (int level = 0; level < MAX_CGROUP_LEVELS; level++) {
        u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (!id)
            break;
        struct socket_deny *d = deny_socket_scopes.lookup(&id);
        if (d && (d->kinds & kind)) {
            e->rule = d->rule[kind == SOCKET_KIND_RAW ? 0 : kind == SOCKET_KIND_ICMP ? 1 : 2];
            if (task_exempt())
                return 0;
            e->hdr.result = -1;  /* -EPERM */
            return 1;
        }
    }
    return 0;
}

/* Raw IP and ICMP sockets: recorded for every job; refused where a policy says so (and the task's job
 * is not in monitor mode). */
int observe_sock_create(struct bpf_sock *sk)
{
    u32 family = sk->family, type = sk->type, protocol = sk->protocol;
    if (family != 2 && family != 10)
        return 1;
    u32 kind = type == SOCK_RAW_ ? SOCKET_KIND_RAW :
               (protocol == IPPROTO_ICMP_ || protocol == IPPROTO_ICMPV6_) ? SOCKET_KIND_ICMP : 0;
    if (!kind)
        return 1;
    struct socket_event e = {};
    fill_header(&e.hdr, EV_SOCKET);
    e.family = family;
    e.type = type;
    e.protocol = protocol;
    int verdict = !socket_refused(&e, kind);
    emit(&e, sizeof(e), EV_SOCKET);
    return verdict;
}

/* Packet sockets (AF_PACKET: frames sent under every connect hook, the node's traffic read) pass neither
 * cgroup/sock_create (inet only) nor the connect hooks, and a syscall tracepoint on socket() would slow every
 * syscall of the host. So they are seen at use: sock:sock_send_length / sock_recv_length (Linux 6.3+; raw
 * tracepoints, after the call; the agent attaches them where they exist), recorded once per socket and
 * process, and where a policy refuses packet sockets the user is killed there - one frame may have left, none
 * after it. A packet socket read only through an mmap'd ring (PACKET_RX_RING) makes no recvmsg and is not
 * seen. Every other socket's send or receive costs one read of its family. */
struct packet_use_key {
    u64 sk;
    u32 tgid;
    u32 pad;
};
BPF_TABLE("lru_hash", struct packet_use_key, u32, packet_socks, 16384);

static __always_inline int packet_use(struct bpf_raw_tracepoint_args *ctx)
{
    void *sk = (void *)ctx->args[0];
    if ((kread_u32(sk, OFF_SK_FAMILY) & 0xffff) != AF_PACKET_)
        return 0;
    struct socket_event e = {};
    fill_header(&e.hdr, EV_SOCKET);
    e.family = AF_PACKET_;
    e.type = kread_u32(sk, OFF_SK_TYPE) & 0xffff;
#if OFF_PACKET_SOCK_NUM >= 0
    e.protocol = kread_u32(sk, OFF_PACKET_SOCK_NUM) & 0xffff;     /* the Ethertype it takes, network order */
#endif
    int refused = socket_refused(&e, SOCKET_KIND_PACKET);
    if (refused)
        bpf_send_signal(9);
    struct packet_use_key k = {.sk = (u64)sk, .tgid = e.hdr.tgid};
    if (!refused && packet_socks.lookup(&k))
        return 0;
    u32 one = 1;
    packet_socks.update(&k, &one);
    emit(&e, sizeof(e), EV_SOCKET);
    return 0;
}

int packet_send(struct bpf_raw_tracepoint_args *ctx) { return packet_use(ctx); }
int packet_recv(struct bpf_raw_tracepoint_args *ctx) { return packet_use(ctx); }
