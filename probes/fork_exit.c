/* fork_exit.c - process creation and process exit, for the process tree.
 *
 * Threads are not processes: sys_enter_clone/clone3 remember the clone flags
 * of the caller, and sched_process_fork skips CLONE_THREAD children. Exit is
 * reported once per process (thread-group leader), with the exit_group()
 * code when the process called it, else -1 (killed by a signal).
 */
#include "gpuguard.h"

#define CLONE_THREAD_FLAG 0x00010000ULL

BPF_HASH(clone_flags, u64, u64, 4096);
BPF_HASH(exit_codes, u32, s32, 4096);

TRACEPOINT_PROBE(syscalls, sys_enter_clone)
{
    u64 id = bpf_get_current_pid_tgid();
    u64 flags = args->clone_flags;
    clone_flags.update(&id, &flags);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_clone3)
{
    u64 id = bpf_get_current_pid_tgid();
    u64 flags = 0;   /* struct clone_args starts with u64 flags (uapi) */
    bpf_probe_read_user(&flags, sizeof(flags), args->uargs);
    clone_flags.update(&id, &flags);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_clone)
{
    u64 id = bpf_get_current_pid_tgid();
    clone_flags.delete(&id);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_clone3)
{
    u64 id = bpf_get_current_pid_tgid();
    clone_flags.delete(&id);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u64 id = bpf_get_current_pid_tgid();
    u64 *flags = clone_flags.lookup(&id);
    if (flags && (*flags & CLONE_THREAD_FLAG))
        return 0;
    struct fork_event e = {};
    fill_header(&e.hdr, EV_FORK);
    e.child_tgid = args->child_pid;
    emit(&e, sizeof(e), EV_FORK);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_exit_group)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    s32 code = args->error_code;
    exit_codes.update(&tgid, &code);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if ((u32)id != tgid)
        return 0;
    struct exit_event e = {};
    fill_header(&e.hdr, EV_EXIT);
    s32 *code = exit_codes.lookup(&tgid);
    e.hdr.result = code ? *code : -1;
    if (code)
        exit_codes.delete(&tgid);
    emit(&e, sizeof(e), EV_EXIT);
    return 0;
}
