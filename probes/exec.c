/* exec.c - every successful exec, from sched:sched_process_exec (no syscall tracepoint).
 *
 * At this point the new image exists: the filename comes from the tracepoint,
 * argv (up to MAX_ARGS args / ARGS_BUF bytes, truncation flagged), the
 * SLURM_JOB_ID environment variable and the exec traits (gpuguard.h) are read from the new image's argument
 * and environment areas in user memory (mm->arg_start..arg_end,
 * env_start..env_end), and the real parent from task->real_parent->tgid.
 * Kernel-struct fields are read at offsets from the running kernel's BTF
 * (see gpuguard.h). An exec that fails before the new image exists is not
 * seen (README: blind spots).
 */
#include "gpuguard.h"

BPF_PERCPU_ARRAY(exec_scratch, struct exec_event, 1);

static __always_inline void read_argv(struct exec_event *e, u64 start, u64 end)
{
    u32 off = 0;
    u64 p = start;
    for (int i = 0; i < MAX_ARGS; i++) {
        if (p >= end)
            break;
        if (off > ARGS_BUF - ARG_LEN) {
            e->flags |= EXEC_ARGS_TRUNCATED;
            break;
        }
        int n = bpf_probe_read_user_str(&e->args[off], ARG_LEN, (void *)p);
        if (n <= 0) {
            e->flags |= EXEC_ARGV_FAULT;
            break;
        }
        if (n == ARG_LEN) {
            e->flags |= EXEC_ARG_CLIPPED;
            off += n;
            e->argc++;
            e->flags |= (p + n < end) ? EXEC_ARGS_TRUNCATED : 0;   /* cannot step over the rest */
            break;
        }
        if (i > 0)
            option_letters(&e->args[off], n, &e->optmask);
        off += n;
        p += n;
        e->argc++;
    }
    if (e->argc == MAX_ARGS && p < end)
        e->flags |= EXEC_ARGS_TRUNCATED;
    e->args_len = off;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u32 zero = 0;
    struct exec_event *e = exec_scratch.lookup(&zero);
    if (!e)
        return 0;
    fill_header(&e->hdr, EV_EXEC);
    e->argc = 0;
    e->flags = 0;
    e->job_env[0] = 0;
    e->optmask = 0;
    TP_DATA_LOC_READ_STR(e->filename, filename, sizeof(e->filename));
    void *task = (void *)bpf_get_current_task();
    e->ppid = real_parent_tgid(task);
    e->tty = 0;
    e->stdio = stdio_kinds_tty(&e->tty);
    u64 mm = kread_u64(task, OFF_TASK_MM);
    if (mm) {
        read_argv(e, kread_u64((void *)mm, OFF_MM_ARG_START), kread_u64((void *)mm, OFF_MM_ARG_END));
    }
    e->traits = exec_traits(e->job_env);
    emit(e, sizeof(*e), EV_EXEC);
    return 0;
}
