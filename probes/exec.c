/* exec.c - every execve/execveat, successful or not.
 *
 * sys_enter_* captures filename, argv (up to MAX_ARGS args / ARGS_BUF bytes,
 * truncation flagged) and the SLURM_JOB_ID env var into a pending entry keyed
 * by pid_tgid; sys_exit_* adds the result and the post-exec comm and emits
 * one exec_event on the ring buffer. Stable ABI only (see gpuguard.h).
 */
#include "gpuguard.h"

BPF_PERCPU_ARRAY(exec_scratch, struct exec_event, 1);
BPF_HASH(exec_pending, u64, struct exec_event, 4096);

/* "SLURM_JO" and "B_ID=" as little-endian words: a word compare keeps the
 * env scan loop small enough for the verifier. */
#define SLURM_W0 STR8('S', 'L', 'U', 'R', 'M', '_', 'J', 'O')
#define SLURM_W1 STR8('B', '_', 'I', 'D', '=', 0, 0, 0)
#define SLURM_W1_MASK 0xFFFFFFFFFFULL
#define SLURM_PREFIX_LEN 13

/* Option letters, so a kill rule can say "ssh, but only with -R/-D/-w".
 * The first letter of a short-option cluster always counts ("-R8080:h:22",
 * "-oExitOnForwardFailure" -> R, o); further letters only when the whole
 * cluster is at most 4 letters ("-NfR" -> N, f, R), since longer clusters are
 * usually an option glued to its value. */
static __always_inline u64 letter_bit(char c)
{
    if (c >= 'a' && c <= 'z')
        return 1ULL << (c - 'a');
    if (c >= 'A' && c <= 'Z')
        return 1ULL << (26 + c - 'A');
    return 0;
}

static __always_inline u64 option_letters(const char *p, int n)
{
    if (n < 3 || p[0] != '-' || p[1] == '-')
        return 0;
    u64 first = letter_bit(p[1]);
    if (n - 2 > 4)
        return first;
    u64 rest = 0;
#pragma unroll
    for (int k = 2; k < 5; k++) {
        if (k >= n - 1)
            break;
        u64 b = letter_bit(p[k]);
        if (!b)
            return first;
        rest |= b;
    }
    return first | rest;
}

static __always_inline void scan_env(struct exec_event *e, const char *const *envp)
{
    for (int i = 0; i < MAX_ENV_SCAN; i++) {
        const char *p = NULL;
        u64 w[2] = {};
        if (bpf_probe_read_user(&p, sizeof(p), &envp[i]) != 0 || !p)
            return;
        if (bpf_probe_read_user(w, sizeof(w), p) != 0)
            continue;
        if (w[0] == SLURM_W0 && (w[1] & SLURM_W1_MASK) == SLURM_W1) {
            bpf_probe_read_user_str(e->job_env, sizeof(e->job_env), p + SLURM_PREFIX_LEN);
            return;
        }
    }
}

static __always_inline int exec_enter(const char *filename, const char *const *argv,
                                      const char *const *envp)
{
    u32 zero = 0;
    struct exec_event *e = exec_scratch.lookup(&zero);
    if (!e)
        return 0;
    fill_header(&e->hdr, EV_EXEC);
    e->argc = 0;
    e->flags = 0;
    e->job_env[0] = 0;
    e->filename[0] = 0;
    e->optmask = 0;
    bpf_probe_read_user_str(e->filename, sizeof(e->filename), filename);

    u32 off = 0;
    int ended = 0;
#pragma unroll
    for (int i = 0; i < MAX_ARGS; i++) {
        const char *argp = NULL;
        if (bpf_probe_read_user(&argp, sizeof(argp), &argv[i]) != 0) {
            e->flags |= EXEC_ARGV_FAULT;
            ended = 1;
            break;
        }
        if (!argp) {
            ended = 1;
            break;
        }
        if (off > ARGS_BUF - ARG_LEN) {
            e->flags |= EXEC_ARGS_TRUNCATED;
            ended = 1;
            break;
        }
        int n = bpf_probe_read_user_str(&e->args[off], ARG_LEN, argp);
        if (n <= 0) {
            e->flags |= EXEC_ARGV_FAULT;
            ended = 1;
            break;
        }
        if (n == ARG_LEN)
            e->flags |= EXEC_ARG_CLIPPED;
        if (i > 0)
            e->optmask |= option_letters(&e->args[off], n);
        off += n;
        e->argc++;
    }
    if (!ended) {
        const char *more = NULL;
        bpf_probe_read_user(&more, sizeof(more), &argv[MAX_ARGS]);
        if (more)
            e->flags |= EXEC_ARGS_TRUNCATED;
    }
    e->args_len = off;
    scan_env(e, envp);

    u64 id = bpf_get_current_pid_tgid();
    if (exec_pending.update(&id, e) != 0)
        count_lost(EV_EXEC);
    return 0;
}

static __always_inline int exec_exit(long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    struct exec_event *e = exec_pending.lookup(&id);
    if (!e)
        return 0;
    e->hdr.result = ret;
    if (ret == 0)
        bpf_get_current_comm(&e->hdr.comm, sizeof(e->hdr.comm));
    emit(e, sizeof(*e), EV_EXEC);
    exec_pending.delete(&id);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
    return exec_enter(args->filename, args->argv, args->envp);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
    return exec_enter(args->filename, args->argv, args->envp);
}

TRACEPOINT_PROBE(syscalls, sys_exit_execve)
{
    return exec_exit(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_execveat)
{
    return exec_exit(args->ret);
}
