/* fork_exit.c - process creation and process exit, for the process tree.
 *
 * Fork: the raw sched_process_fork tracepoint hands over the child's
 * task_struct, so threads (pid != tgid) are dropped in the kernel and the
 * real parent (task->real_parent->tgid, which differs from the caller for
 * CLONE_PARENT) is reported. Exit: sched_process_exit for thread-group
 * leaders, with task->exit_code: the exit status and the terminating signal.
 * No syscall tracepoint; kernel fields at BTF offsets (gpuguard.h).
 */
#include "gpuguard.h"

RAW_TRACEPOINT_PROBE(sched_process_fork)
{
    void *child = (void *)ctx->args[1];
    u32 pid = kread_u32(child, OFF_TASK_PID);
    u32 tgid = kread_u32(child, OFF_TASK_TGID);
    if (pid != tgid)
        return 0;                            /* a new thread, not a process */
    struct fork_event e = {};
    fill_header(&e.hdr, EV_FORK);
    e.child_tgid = tgid;
    e.parent_tgid = real_parent_tgid(child);
    escape_inherit(e.hdr.tgid, tgid);        /* a watched job's child belongs to the job too */
    emit(&e, sizeof(e), EV_FORK);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    if ((u32)id != (u32)(id >> 32))
        return 0;                            /* a thread; the process ends with its leader */
    u32 leader = id >> 32;
    task_origins.delete(&leader);
    struct exit_event e = {};
    fill_header(&e.hdr, EV_EXIT);
    void *task = (void *)bpf_get_current_task();
    u32 status = kread_u32(task, OFF_TASK_EXIT_CODE);
    e.hdr.result = status;
    e.code = (status >> 8) & 0xff;
    e.signal = status & 0x7f;
    emit(&e, sizeof(e), EV_EXIT);
    return 0;
}
