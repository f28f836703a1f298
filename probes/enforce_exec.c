/* enforce_exec.c - kill at exec, in the kernel, before the first instruction.
 *
 * At sched_process_exec the new comm is set; the policy map kill_comms holds
 * (scope cgroup id, comm) -> (rule, required option letters). The scope is
 * the cgroup v2 id of a job's cgroup, or of the root for host-wide rules; the
 * current task matches when that cgroup is one of its ancestors. A match gets
 * SIGKILL from bpf_send_signal and an enforce_event on the ring buffer.
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
};

#define KILL_IF_STDIO_SOCKET 1   /* kill only when fd 0, 1 or 2 is a socket (a reverse shell) */

struct kill_val {
    u32 rule;
    u32 flags;
    u64 optmask;   /* 0: any argv; else kill only if argv has one of these option letters */
};

BPF_HASH(kill_comms, struct kill_key, struct kill_val, 4096);
BPF_PERCPU_ARRAY(kill_arg_scratch, struct kill_arg, 1);

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
    u64 mask = 0;
    for (int i = 0; i < MAX_ARGS; i++) {
        if (p >= end)
            break;
        int n = bpf_probe_read_user_str(a->s, sizeof(a->s), (void *)p);
        if (n <= 0 || n >= (int)sizeof(a->s))
            break;
        if (i > 0)
            mask |= option_letters(a->s, n);
        p += n;
    }
    return mask;
}

/* Not a TRACEPOINT_PROBE: BCC would attach it through a perf event that dies with the
 * agent. agent/pinned_exec.py attaches it with a pinned bpf_link instead, so a killed
 * agent's node keeps killing at exec (the context is unused: comm and cgroup come from helpers). */
int kill_at_exec(void *args)
{
    struct kill_key k = {};
    bpf_get_current_comm(&k.comm, sizeof(k.comm));
    u64 opts = 0;
    int opts_read = 0;
    for (int level = 0; level < MAX_CGROUP_LEVELS; level++) {
        k.scope = bpf_get_current_ancestor_cgroup_id(level);
        if (!k.scope)
            break;
        struct kill_val *v = kill_comms.lookup(&k);
        if (!v)
            continue;
        if (v->optmask && !opts_read) {
            opts = argv_optmask();
            opts_read = 1;
        }
        if (v->optmask && !(v->optmask & opts))
            continue;
        if ((v->flags & KILL_IF_STDIO_SOCKET) && !(stdio_kinds() & (STDIO_SOCKET(0) | STDIO_SOCKET(1) | STDIO_SOCKET(2))))
            continue;
        if (task_exempt())
            return 0;
        bpf_send_signal(9);
        struct enforce_event e = {};
        fill_header(&e.hdr, EV_ENFORCE);
        e.action = ACT_KILL_EXEC;
        e.rule = v->rule;
        emit(&e, sizeof(e), EV_ENFORCE);
        break;
    }
    return 0;
}
