/* connect.c - outbound connects (TCP, UDP; v4, v6, v4-mapped), no syscall tracepoint.
 *
 * cgroup sock_addr programs attached observe-only (they return 1) at the
 * cgroup2 root see every connect() and every unconnected UDP sendmsg() on the
 * host, with the socket type and protocol from the hook context. They run
 * alongside the enforcement programs attached lower in the tree (all
 * programs of the effective array run). The TCP outcome comes from
 * sock:inet_sock_set_state (SYN_SENT -> ESTABLISHED, or -> CLOSE with the
 * socket's sk_err at its BTF offset), matched to the connect by the socket's
 * address (``sk``). UDP sendmsg is reported once per (socket, destination).
 */
#include "gpuguard.h"

#define AF_INET_ 2
#define AF_INET6_ 10
#define TCP_ESTABLISHED_ 1
#define TCP_SYN_SENT_ 2
#define TCP_SYN_RECV_ 3
#define TCP_LISTEN_ 10
#define TCP_CLOSE_ 7
#define IPPROTO_TCP_ 6

struct udp_seen_key {
    u64 sk;
    u32 port;
    u8 addr[16];
};

BPF_TABLE("lru_hash", struct udp_seen_key, u8, udp_seen, 16384);

/* Summarising in the kernel: connects of one process to one destination within FOLD_WINDOW_NS after a reported
 * one are counted, not reported; the next report carries the count (connect_event.repeats). A connect loop
 * then costs about one record a second, and the TCP outcome is reported only for reported sockets. */
#define FOLD_WINDOW_NS 1000000000ULL
#define FOLD_INBOUND 0x8000          /* fold_key.flags of inbound connections (connects: CONNECT_SENDMSG or 0) */

struct fold_key {
    u32 tgid;
    u16 dport;
    u16 flags;
    u8 addr[16];
};

struct fold_val {
    u64 last_ns;
    u32 folded;
    u32 _pad;
};

BPF_TABLE("lru_hash", struct fold_key, struct fold_val, connect_folds, 65536);
/* Inbound connections have their own: peers on other hosts choose how many distinct keys they make, and must not
 * be able to evict the summaries of the node's own connects. */
BPF_TABLE("lru_hash", struct fold_key, struct fold_val, inbound_folds, 16384);
/* TCP sockets whose connect was reported -> the connecting task's cgroup. The outcome (SYN-ACK, RST, a timeout)
 * is processed in softirq, in whatever task is current: the record is charged to the connecting job, never to
 * that bystander's budget (a flood of one job's connects must not spend another job's). */
BPF_TABLE("lru_hash", u64, u64, reported_sks, 65536);

/* 1: report (*repeats = what was folded since the last report); 0: folded into an earlier report. In the inbound
 * map or the connects' (BCC rewrites map calls by name: a map cannot be a parameter). */
static __always_inline int fold(struct fold_key *k, u64 now, u32 *repeats, int inbound)
{
    struct fold_val *v = inbound ? inbound_folds.lookup(k) : connect_folds.lookup(k);
    if (v && now - v->last_ns < FOLD_WINDOW_NS) {
        __sync_fetch_and_add(&v->folded, 1);
        return 0;
    }
    *repeats = v ? v->folded : 0;
    struct fold_val fresh = {.last_ns = now};
    if (inbound)
        inbound_folds.update(k, &fresh);
    else
        connect_folds.update(k, &fresh);
    return 1;
}

static __always_inline int fold_connect(struct connect_event *e)
{
    struct fold_key k = {.tgid = e->hdr.tgid, .dport = e->dport, .flags = (u16)e->flags};
    __builtin_memcpy(k.addr, e->daddr, 16);
    return fold(&k, e->hdr.ts_ns, &e->repeats, 0);
}

/* The connect's destination and socket, and who and when (fill_task): what the fold decides on. */
static __always_inline void connect_event_of(struct bpf_sock_addr *ctx, struct connect_event *e, u32 family)
{
    fill_task(&e->hdr);
    e->family = family;
    e->dport = bpf_ntohs((u16)ctx->user_port);
    e->sock_type = ctx->type;
    e->protocol = ctx->protocol;
    e->sk = (u64)ctx->sk;
    if (family == AF_INET_) {
        u32 a = ctx->user_ip4;
        __builtin_memcpy(e->daddr, &a, 4);
    } else {
        u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1], a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
        __builtin_memcpy(&e->daddr[0], &a0, 4);
        __builtin_memcpy(&e->daddr[4], &a1, 4);
        __builtin_memcpy(&e->daddr[8], &a2, 4);
        __builtin_memcpy(&e->daddr[12], &a3, 4);
    }
}

static __always_inline int observe(struct bpf_sock_addr *ctx, u32 family, int sendmsg)
{
    struct connect_event e = {};
    connect_event_of(ctx, &e, family);
    if (sendmsg) {
        struct udp_seen_key k = {};
        k.sk = e.sk;
        k.port = e.dport;
        __builtin_memcpy(k.addr, e.daddr, 16);
        u8 one = 1;
        if (udp_seen.lookup(&k))
            return 1;
        udp_seen.update(&k, &one);
        e.flags = CONNECT_SENDMSG;
    }
    if (!fold_connect(&e))
        return 1;
    fill_identity(&e.hdr, EV_CONNECT);  /* after the fold: a folded repeat pays for none of it */
    if (current_image_nolink())         /* after the fold: only reported connects pay for the four reads */
        e.flags |= CONNECT_IMAGE_NOLINK;
    /* a reported TCP connect's socket gets its owner (packet_sender: its segments may leave from softirq); a
     * folded repeat's does not - sk_storage costs ~400 ns per socket, and its packets fall back to `current`
     * only within the socket's cgroup, else to no process at all */
    if (!sendmsg && e.sock_type == 1)
        own_socket(ctx->sk);
    if (!sendmsg) {
        u64 cgroup = e.hdr.cgroup_id;
        reported_sks.update(&e.sk, &cgroup);
    }
    emit(&e, sizeof(e), EV_CONNECT);
    return 1;
}

int observe_connect4(struct bpf_sock_addr *ctx) { return observe(ctx, AF_INET_, 0); }
int observe_connect6(struct bpf_sock_addr *ctx) { return observe(ctx, AF_INET6_, 0); }
int observe_sendmsg4(struct bpf_sock_addr *ctx) { return observe(ctx, AF_INET_, 1); }
int observe_sendmsg6(struct bpf_sock_addr *ctx) { return observe(ctx, AF_INET6_, 1); }

/* Bind shells through pipes (`mkfifo f; nc -l -p 4444 < f | sh -i > f`): the listening twin of the connect hooks'
 * pipe check (enforce_connect.c). If the listener's stdin/stdout is the other end of a pipe on a watched shell's
 * stdio (the shell exec'd first), the listener is killed here, at listen(), before anyone can connect (reported
 * only where the job is in monitor mode); otherwise its pipe ends are remembered, so a watched shell exec'd later
 * on their other ends is killed at exec (enforce_exec.c). Entries exist only for shells a policy watches. */
static __always_inline void listener_pipes(u16 port)
{
    struct pipe_key keys[3] = {};
    stdio_pipes(keys);
    u32 self = bpf_get_current_pid_tgid() >> 32;
    struct pipe_holder *h = shell_at_other_end(keys, self);
    if (!h) {
        remember_network_ends(keys, self);
        return;
    }
    int monitor = task_exempt();
    if (!monitor)
        bpf_send_signal(9);
    struct enforce_event r = {};
    fill_header(&r.hdr, EV_ENFORCE);
    r.action = monitor ? ACT_SEEN_REVERSE_SHELL : ACT_KILL_BIND_SHELL;
    r.rule = h->rule;
    r.peer_tgid = h->tgid;
    r.dport = port;
    emit(&r, sizeof(r), EV_ENFORCE);
}

/* The cgroup a socket was created in (an accepted socket: its listener's), from its sk_cgrp_data. */
static __always_inline u64 socket_cgroup_id(void *sk)
{
    void *cgrp = (void *)kread_u64(sk, OFF_SK_CGRP_DATA + OFF_SKCD_CGROUP);
    void *kn = cgrp ? (void *)kread_u64(cgrp, OFF_CGROUP_KN) : 0;
    return kn ? kread_u64(kn, OFF_KERNFS_ID) : 0;
}

/* A passive open completed (SYN_RECV -> ESTABLISHED on the child socket): a connection from another host
 * reached a listener. Softirq, any task current: the job is the socket's cgroup, there is no process yet.
 * Loopback peers are left out (their connect is reported by the connecting process); repeats from one peer to
 * one port of one cgroup within FOLD_WINDOW_NS are folded (a scan or a busy client costs ~1 record a second). */
static __always_inline void report_inbound(void *sk, u16 family, u16 lport, u16 rport, const u8 raddr[16])
{
    struct inbound_event e = {};
    e.family = family;
    __builtin_memcpy(e.raddr, raddr, 16);
    if (on_node(e.raddr))
        return;
    fill_header(&e.hdr, EV_INBOUND);
    e.hdr.cgroup_id = socket_cgroup_id(sk);    /* never the current task's: a bystander in softirq */
    no_process(&e.hdr);
    e.hdr.uid = e.hdr.gid = 0;
    e.lport = lport;
    e.rport = rport;
    struct fold_key k = {.tgid = (u32)(e.hdr.cgroup_id ^ (e.hdr.cgroup_id >> 32)), .dport = e.lport,
                         .flags = FOLD_INBOUND};
    __builtin_memcpy(k.addr, e.raddr, 16);
    if (!fold(&k, e.hdr.ts_ns, &e.repeats, 1))
        return;
    emit(&e, sizeof(e), EV_INBOUND);
}

/* A socket's address, local or remote, as 16 bytes (v4 mapped), read from its sock_common at BTF offsets. */
static __always_inline void sock_addr16(u8 out[16], void *sk, u32 family, int remote)
{
    u8 v4[4] = {};
    u8 v6[16] = {};
    if (family == 2) {
        if (remote)
            kread_bytes(v4, 4, sk, OFF_SKC_DADDR);
        else
            kread_bytes(v4, 4, sk, OFF_SKC_RCV_SADDR);
    } else {
#if OFF_SKC_V6_DADDR >= 0
        if (remote)
            kread_bytes(v6, 16, sk, OFF_SKC_V6_DADDR);
        else
            kread_bytes(v6, 16, sk, OFF_SKC_V6_RCV_SADDR);
#endif
    }
    addr16(out, family, v4, v6);
}

static __always_inline int is_tcp(void *sk)
{
    return (kread_u32(sk, OFF_SK_PROTOCOL) & 0xffff) == IPPROTO_TCP_;
}

/* Every TCP state change of the host passes here. A raw tracepoint, not the classic sock:inet_sock_set_state:
 * the classic one fills a trace record (ports, both addresses, v6 included) for each change before the program
 * runs; the raw one hands over (sk, oldstate, newstate), and the socket's fields are read only on the three
 * paths that report - a connect's outcome reads none. */
RAW_TRACEPOINT_PROBE(inet_sock_set_state)
{
    void *sk = (void *)ctx->args[0];
    int oldstate = (int)ctx->args[1];
    int newstate = (int)ctx->args[2];
    if (oldstate == TCP_SYN_RECV_ && newstate == TCP_ESTABLISHED_) {
        if (!is_tcp(sk))
            return 0;
        u32 family = kread_u32(sk, OFF_SK_FAMILY) & 0xffff;
        u8 raddr[16];
        sock_addr16(raddr, sk, family, 1);
        u16 lport = kread_u32(sk, OFF_SKC_NUM) & 0xffff;
        u16 rport = bpf_ntohs(kread_u32(sk, OFF_SKC_DPORT) & 0xffff);
        report_inbound(sk, family, lport, rport, raddr);
        return 0;
    }
    if (newstate == TCP_LISTEN_) {       /* listen(): the listening process is current */
        if (!is_tcp(sk))
            return 0;
        struct listen_event e = {};
        fill_header(&e.hdr, EV_LISTEN);
        e.family = kread_u32(sk, OFF_SK_FAMILY) & 0xffff;
        e.port = kread_u32(sk, OFF_SKC_NUM) & 0xffff;
        sock_addr16(e.addr, sk, e.family, 0);
        emit(&e, sizeof(e), EV_LISTEN);
        listener_pipes(e.port);
        return 0;
    }
    if (oldstate != TCP_SYN_SENT_)
        return 0;
    if (newstate != TCP_ESTABLISHED_ && newstate != TCP_CLOSE_)
        return 0;
    u64 skp = (u64)sk;
    u64 *connector = reported_sks.lookup(&skp);
    if (!connector)
        return 0;                          /* its connect was folded (or made before the agent started) */
    u64 cgroup = *connector;
    reported_sks.delete(&skp);
    struct connect_result_event e = {};
    fill_header(&e.hdr, EV_CONNECT_RESULT);
    e.hdr.cgroup_id = cgroup;              /* the connecting job's; the task here may be anyone (softirq) */
    no_process(&e.hdr);                    /* the agent joins the outcome to its connect by socket */
    e.sk = skp;
    if (newstate == TCP_CLOSE_) {
        int err = kread_u32(sk, OFF_SK_ERR);
        e.hdr.result = err ? -err : -111;    /* ECONNREFUSED when the socket says nothing */
    }
    emit(&e, sizeof(e), EV_CONNECT_RESULT);
    return 0;
}
