/* exec.c - every successful exec, from sched:sched_process_exec (no syscall tracepoint).
 *
 * At this point the new image exists: the filename comes from the tracepoint,
 * argv (up to EXEC_MAX_ARGS args / ARGS_BUF bytes; an argument over ARG_LEN is clipped and stepped over,
 * so what follows it is still read; truncation flagged), the SLURM_JOB_ID environment variable and the
 * exec traits (gpuguard.h) are read from the new image's argument
 * and environment areas in user memory (mm->arg_start..arg_end,
 * env_start..env_end), and the real parent from task->real_parent->tgid.
 * Kernel-struct fields are read at offsets from the running kernel's BTF
 * (see gpuguard.h). An exec that fails before the new image exists is not
 * seen (README: blind spots).
 */
#include "gpuguard.h"

BPF_PERCPU_ARRAY(exec_scratch, struct exec_event, 1);

#define EXEC_MAX_ARGS 48          /* arguments recorded (the kill program reads MAX_ARGS for option letters) */
#define ARGV_READS 64             /* user-memory reads per exec: arguments, and 4 KiB pieces of clipped ones */

/* argv into e->args. An argument longer than ARG_LEN keeps its first ARG_LEN - 1 bytes and the rest is stepped
 * over in 4 KiB pieces, so the arguments after it are still read: one long first argument must not hide a
 * stratum URL behind it. One loop, one read per turn (nested loops were too many paths for the verifier);
 * "skipping" lives in map memory for the same reason. */
static __always_inline void read_argv(struct exec_event *e, u64 start, u64 end)
{
    u32 zero = 0;
    struct env_buf *b = env_scratch.lookup(&zero);
    if (!b)
        return;
    b->skipping = 0;
    e->args_len = 0;              /* the write offset, kept in memory too: one range for every path */
    u64 p = start;
    for (int i = 0; i < ARGV_READS; i++) {
        if (p >= end)
            break;
        if (b->skipping) {
            long m = bpf_probe_read_user_str(b->s, sizeof(b->s), (void *)p);
            if (m <= 0) {
                e->flags |= EXEC_ARGV_FAULT;
                break;
            }
            if (m < (long)sizeof(b->s)) {
                p += m;
                b->skipping = 0;
            } else {
                p += m - 1;
            }
            continue;
        }
        u32 off = e->args_len;
        if (e->argc >= EXEC_MAX_ARGS || off > ARGS_BUF - ARG_LEN) {
            e->flags |= EXEC_ARGS_TRUNCATED;
            break;
        }
        int n = bpf_probe_read_user_str(&e->args[off], ARG_LEN, (void *)p);
        if (n <= 0) {
            e->flags |= EXEC_ARGV_FAULT;
            break;
        }
        e->args_len = off + n;
        e->argc++;
        if (n == ARG_LEN) {
            e->flags |= EXEC_ARG_CLIPPED;
            p += n - 1;
            b->skipping = 1;
            continue;
        }
        p += n;
    }
    if (p < end && !(e->flags & (EXEC_ARGV_FAULT | EXEC_ARGS_TRUNCATED)))
        e->flags |= EXEC_ARGS_TRUNCATED;  /* out of reads */
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
    e->args_total = 0;
    TP_DATA_LOC_READ_STR(e->filename, filename, sizeof(e->filename));
    void *task = (void *)bpf_get_current_task();
    e->ppid = real_parent_tgid(task);
    e->tty = 0;
    e->stdio = stdio_kinds_tty(&e->tty);
    u64 mm = kread_u64(task, OFF_TASK_MM);
    if (mm) {
        u64 start = kread_u64((void *)mm, OFF_MM_ARG_START), end = kread_u64((void *)mm, OFF_MM_ARG_END);
        e->args_total = end > start ? (u32)(end - start) : 0;
        read_argv(e, start, end);
    }
    void *image = 0;
    e->traits = exec_traits(e->job_env, &image);
    e->exe_ino = 0;
    e->exe_dev = 0;
    e->exe_pad = 0;
    inode_identity(image, &e->exe_dev, &e->exe_ino);
    e->exe_ctime_ns = inode_ctime_ns(image);
    emit(e, sizeof(*e), EV_EXEC);
    return 0;
}
