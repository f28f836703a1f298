/* enforce_exec.c - kill at exec, in the kernel, before the first instruction.
 *
 * At sched_process_exec the new comm is set; the policy map kill_comms holds
 * (scope cgroup id, comm) -> (rule, required option letters). The scope is
 * the cgroup v2 id of a job's cgroup, or of the root for host-wide rules; the
 * current task matches when that cgroup is one of its ancestors. A match gets
 * SIGKILL from bpf_send_signal and an enforce_event on the ring buffer.
 * kill_traits kills by what the image is (a memfd, ld.so PATH, a preload from /tmp), any name.
 * Names are trivially renamed: the agent also kills by executable hash and the
 * payload hook catches renamed miners on the wire.
 *
 * Lifetime: attached through a bpf_link pinned in bpffs (agent/pinned_exec.py), so it
 * outlives a killed agent; the next agent attaches its own, then unpins the old one. */
#include "gpuguard.h"

struct kill_key {
    u64 scope;
    char comm[TASK_COMM_LEN];
};

struct kill_arg {
    char s[ARG_LEN];
    u64 mask;                      /* option letters so far (in memory: see option_letters) */
};

/* kill_val.flags: KILL_IF_STDIO_SOCKET, KILL_IF_PIPE_NETWORK (vocab.h, from the KillCondition enum) */

struct kill_val {
    u32 rule;
    u32 flags;
    u64 optmask;   /* 0: any argv; else kill only if argv has one of these option letters */
};

BPF_HASH(kill_comms, struct kill_key, struct kill_val, 4096);
/* kill_opts_config[0] = 1 when some kill_comms entry needs option letters: argv is then read once per exec,
 * before the scope walk (reading it inside the walk multiplied the verifier's paths by the levels). */
BPF_ARRAY(kill_opts_config, u32, 1);
BPF_PERCPU_ARRAY(kill_arg_scratch, struct kill_arg, 1);

/* Kill by what the exec is (ExecTrait bits), whatever its name: scope -> (bits, the rule of each bit);
 * (rule, comm) -> exempt (container runtimes that legitimately exec from a memfd);
 * kill_trait_config[0]: the bits any entry asks for (0: the traits are not even computed). */
#define TRAIT_BITS 7

struct trait_entry {
    u32 bits;
    u32 rule[TRAIT_BITS];
};

struct trait_exempt_key {
    u32 rule;
    char comm[TASK_COMM_LEN];
};

BPF_HASH(kill_traits, u64, struct trait_entry, 4096);
BPF_HASH(kill_trait_exempt, struct trait_exempt_key, u32, 1024);
BPF_ARRAY(kill_trait_config, u32, 1);

static __always_inline void report_kill(u32 action, u32 rule, u32 peer)
{
    struct enforce_event e = {};
    fill_header(&e.hdr, EV_ENFORCE);
    e.action = action;
    e.rule = rule;
    e.peer_tgid = peer;
    emit(&e, sizeof(e), EV_ENFORCE);
}

/* 1 when a kill_traits entry in an ancestor scope matched (and the task was killed, or is exempt). One
 * lookup per level; the bit loop runs only on a hit and ends the walk. */
static __always_inline int kill_by_traits(const char *comm)
{
    u32 zero = 0;
    u32 *want = kill_trait_config.lookup(&zero);
    if (!want || !*want)
        return 0;
    u32 traits = exec_traits(0, 0) & *want;
    if (!traits)
        return 0;
    for (int level = 0; level < MAX_CGROUP_LEVELS; level++) {
        u64 scope = bpf_get_current_ancestor_cgroup_id(level);
        if (!scope)
            break;
        struct trait_entry *t = kill_traits.lookup(&scope);
        if (!t)
            continue;
        u32 hit = t->bits & traits;
        if (!hit)
            continue;
        struct trait_exempt_key ek = {};
        __builtin_memcpy(ek.comm, comm, TASK_COMM_LEN);
        for (u32 bit = 0; bit < TRAIT_BITS; bit++) {
            if (hit & (1U << bit)) {
                ek.rule = t->rule[bit];
                break;
            }
        }
        if (kill_trait_exempt.lookup(&ek))
            return 0;
        if (task_exempt())
            return 1;           /* monitor mode: user space alerts from the exec record's traits */
        bpf_send_signal(9);
        report_kill(ACT_KILL_EXEC, ek.rule, 0);
        return 1;
    }
    return 0;
}

/* Option letters of the new image's argv, read from its argument area (only
 * for a comm that matched a rule with letters: rare). Self-contained, so a
 * pinned program left by a dead agent still computes them. */
static __always_inline u64 argv_optmask(void)
{
    u32 zero = 0;
    struct kill_arg *a = kill_arg_scratch.lookup(&zero);
    void *task = (void *)bpf_get_current_task();
    u64 mm = kread_u64(task, OFF_TASK_MM);
    if (!a || !mm)
        return 0;
    u64 p = kread_u64((void *)mm, OFF_MM_ARG_START);
    u64 end = kread_u64((void *)mm, OFF_MM_ARG_END);
    a->mask = 0;
    for (int i = 0; i < MAX_ARGS; i++) {
        if (p >= end)
            break;
        int n = bpf_probe_read_user_str(a->s, sizeof(a->s), (void *)p);
        if (n <= 0 || n >= (int)sizeof(a->s))
            break;
        if (i > 0)
            option_letters(a->s, n, &a->mask);
        p += n;
    }
    return a->mask;
}

/* Does the new image's stdio lead to the network? KILL_IF_STDIO_SOCKET: fd 0-2 is an inet socket.
 * KILL_IF_PIPE_NETWORK: fd 0-2 is a pipe whose other end a process that connected out holds as its
 * stdio (*peer = its tgid); when none does yet, the shell's pipe ends are remembered so that the
 * process feeding it gets EPERM when it connects (enforce_connect.c). */
static __always_inline int stdio_condition(struct kill_val *v, u32 *peer)
{
    if ((v->flags & KILL_IF_STDIO_SOCKET) && (stdio_kinds() & (STDIO_SOCKET(0) | STDIO_SOCKET(1) | STDIO_SOCKET(2))))
        return 1;
    if (v->flags & KILL_IF_PTY_NETWORK) {
        u32 holder = stdio_pty_peer();
        if (holder) {
            *peer = holder;
            return 1;
        }
    }
    if (!(v->flags & KILL_IF_PIPE_NETWORK))
        return 0;
    struct pipe_key keys[3] = {};
    stdio_pipes(keys);
    u32 self = bpf_get_current_pid_tgid() >> 32;
    struct pipe_holder *h = network_at_other_end(keys, self);
    if (h) {
        *peer = h->tgid;
        return 1;
    }
    struct pipe_holder mine = {.tgid = self, .rule = v->rule};
    for (int fd = 0; fd < 3; fd++)
        if (keys[fd].inode)
            shell_pipes.update(&keys[fd], &mine);
    return 0;
}

/* Not a TRACEPOINT_PROBE: BCC would attach it through a perf event that dies with the
 * agent. agent/pinned_exec.py attaches it with a pinned bpf_link instead, so a killed
 * agent's node keeps killing at exec (the context is unused: comm and cgroup come from helpers). */
int kill_at_exec(void *args)
{
    struct kill_key k = {};
    bpf_get_current_comm(&k.comm, sizeof(k.comm));
    if (kill_by_traits(k.comm))
        return 0;
    u32 zero = 0;
    u32 *need_opts = kill_opts_config.lookup(&zero);
    u64 opts = need_opts && *need_opts ? argv_optmask() : 0;
    for (int level = 0; level < MAX_CGROUP_LEVELS; level++) {
        k.scope = bpf_get_current_ancestor_cgroup_id(level);
        if (!k.scope)
            break;
        struct kill_val *v = kill_comms.lookup(&k);
        if (!v)
            continue;
        if (v->optmask && !(v->optmask & opts))
            continue;
        u32 peer = 0;
        if (v->flags && !stdio_condition(v, &peer))
            continue;
        int exempt = task_exempt();
        if (exempt && !peer)
            return 0;      /* monitor mode: user space alerts from the exec record */
        if (!exempt)
            bpf_send_signal(9);
        report_kill(exempt ? ACT_SEEN_REVERSE_SHELL : ACT_KILL_EXEC, v->rule, peer);
        break;
    }
    return 0;
}
