/* enforce_escape.c - a process that leaves its job's cgroup.
 *
 * Root inside a job can write its own pid into another cgroup's cgroup.procs and so step outside every hook
 * attached to the job's cgroup (connect policy, payload fingerprints, exec kills). escape_scopes lists the job
 * cgroups the agent watches; a task exec'd or forked inside one carries the job in task_origins (gpuguard.h,
 * fork_exit.c), and the agent seeds the tasks already running. At cgroup_attach_task (after the move) the
 * destination's ancestor at the job's level says whether the task is still inside its job; if not:
 *   - the mover is the moved process itself, or another process of the same job: with the scope's kill flag
 *     it gets SIGKILL before its write() returns (ACT_KILL_ESCAPE), so nothing runs outside the job;
 *   - anyone else (a node daemon, an administrator) moved it: reported only (ACT_SEEN_ESCAPE); the
 *     collector decides (a kill order for the moved process).
 * The record names the moved process (header), the mover (peer_tgid), the job's cgroup (header cgroup_id)
 * and the destination (payload: its path, first 64 bytes).
 * Needs cgroup->ancestors[] (Linux 6.2+); without it every move of a watched task out of its exact job cgroup
 * is reported, not killed (OFF_CGROUP_ANCESTORS < 0). */
#include "gpuguard.h"

/* An entry sits on a job's own cgroup (job_level = its level) or on the parent of a kind's jobs (/slurm/uid_0,
 * kubepods-besteffort.slice: job_level = its level + 1), so a job created later is watched from its first exec
 * with no race against the agent. */
struct escape_scope {
    u32 rule;
    u32 job_level;
    u32 kill;
    u32 _pad;
};

BPF_HASH(escape_scopes, u64, struct escape_scope, 4096);
BPF_ARRAY(escape_config, u32, 1);              /* [0] = 1 when escape_scopes has entries */
BPF_PERCPU_ARRAY(escape_scratch, struct enforce_event, 1);

static __always_inline int escape_watch_on(void)
{
    u32 zero = 0;
    u32 *on = escape_config.lookup(&zero);
    return on && *on;
}

/* A new image inside a watched job: remember the job (the outermost watched ancestor says at which level). */
RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    if (!escape_watch_on())
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    for (int level = 0; level < MAX_CGROUP_LEVELS; level++) {
        u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (!id)
            break;
        struct escape_scope *s = escape_scopes.lookup(&id);
        if (!s)
            continue;
        u32 job_level = s->job_level;
        u64 job = job_level < MAX_CGROUP_LEVELS ? bpf_get_current_ancestor_cgroup_id(job_level) : 0;
        if (!job)
            break;                               /* at the kinds' parent itself: in no job */
        struct task_origin o = {.scope = job, .level = job_level, .rule = s->rule,
                                .kill = s->kill && !task_exempt()};
        task_origins.update(&tgid, &o);
        return 0;
    }
    task_origins.delete(&tgid);
    return 0;
}

static __always_inline u64 cgroup_id_of(void *cgrp)
{
    void *kn = (void *)kread_u64(cgrp, OFF_CGROUP_KN);
    return kn ? kread_u64(kn, OFF_KERNFS_ID) : 0;
}

/* args: struct cgroup *dst_cgrp, const char *path, struct task_struct *task, bool threadgroup */
RAW_TRACEPOINT_PROBE(cgroup_attach_task)
{
    void *dst = (void *)ctx->args[0];
    void *task = (void *)ctx->args[2];
    u32 moved = kread_u32(task, OFF_TASK_TGID);
    struct task_origin *o = task_origins.lookup(&moved);
    if (!o)
        return 0;
    u64 scope = o->scope;
    u32 level = o->level, rule = o->rule, may_kill = o->kill;
    u32 dst_level = kread_u32(dst, OFF_CGROUP_LEVEL);
    u64 at = 0;
#if OFF_CGROUP_ANCESTORS >= 0
    if (level <= dst_level && level < MAX_CGROUP_LEVELS) {
        void *anc = (void *)kread_u64(dst, OFF_CGROUP_ANCESTORS + level * 8);
        at = anc ? cgroup_id_of(anc) : 0;
    }
#else
    if (level == dst_level)
        at = cgroup_id_of(dst);
#endif
    if (at == scope)
        return 0;                                /* moved within its job (a step, a sub-cgroup) */
    u32 mover = bpf_get_current_pid_tgid() >> 32;
    int same_job = mover == moved;
    if (!same_job) {
        struct task_origin *m = task_origins.lookup(&mover);
        same_job = m && m->scope == scope;
    }
    int kill = may_kill && same_job && OFF_CGROUP_ANCESTORS >= 0;
    if (kill)
        bpf_send_signal(9);                      /* the mover: before its write() returns */

    u32 zero = 0;
    struct enforce_event *e = escape_scratch.lookup(&zero);
    if (!e)
        return 0;
    fill_header(&e->hdr, EV_ENFORCE);
    e->hdr.cgroup_id = scope;                    /* the job it left */
    e->hdr.tgid = moved;
    e->hdr.tid = kread_u32(task, OFF_TASK_PID);
    u64 comm[2] = {kread_u64(task, OFF_TASK_COMM), kread_u64(task, OFF_TASK_COMM + 8)};   /* TASK_COMM_LEN 16 */
    __builtin_memcpy(e->hdr.comm, comm, sizeof(comm));
    e->action = kill ? ACT_KILL_ESCAPE : ACT_SEEN_ESCAPE;
    e->rule = rule;
    e->family = 0;
    e->dport = 0;
    e->peer_tgid = mover;
    __builtin_memset(e->daddr, 0, sizeof(e->daddr));
    u64 dst_id = cgroup_id_of(dst);
    __builtin_memcpy(e->daddr, &dst_id, sizeof(dst_id));   /* the destination cgroup's id */
    e->repeats = 0;
    long n = bpf_probe_read_kernel_str(e->payload, sizeof(e->payload), (void *)ctx->args[1]);
    e->payload_len = n > 0 ? n - 1 : 0;
    emit(e, sizeof(*e), EV_ENFORCE);
    return 0;
}
