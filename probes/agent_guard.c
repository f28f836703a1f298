/* agent_guard.c - a signal sent to the agent by another process.
 *
 * Root in a job can stop the agent (kill -STOP <pid>: every user-space decision, spool and heartbeat pauses) or
 * end it, by number, by a name found with pgrep, or from inline code; no argv rule sees a pid. The raw
 * signal:signal_generate tracepoint runs in the sender's context for every signal the kernel generates, so the
 * record names the sender (header: its process, cgroup, job) and the agent (peer_tgid), and goes on the
 * priority ring (ACT_SEEN_AGENT_SIGNAL, rule = the signal number). Only signals a process sends (kill, tkill,
 * sigqueue: si_code SI_USER, SI_TKILL, SI_QUEUE) whose default action stops or ends a process are reported; the
 * agent's own, the kernel's (a terminal's Ctrl-C, a fault, a pipe) and SIGCHLD/SIGCONT/SIGWINCH are not.
 * The signal is not refused (no hook here can refuse one): a stopped agent reports it when it runs again, and
 * the collector's silence check covers the time between. args: int sig, struct kernel_siginfo *info,
 * struct task_struct *task, int type, int result. */
#include "gpuguard.h"

BPF_HASH(guarded_tgids, u32, u32, 64);           /* the agent's process (agent/loader.py writes it at load) */
BPF_PERCPU_ARRAY(guard_scratch, struct enforce_event, 1);

/* HUP INT QUIT ILL TRAP ABRT BUS FPE KILL USR1 SEGV USR2 PIPE ALRM TERM STKFLT STOP TSTP TTIN TTOU XCPU XFSZ
 * VTALRM PROF SYS: every signal but CHLD (17), CONT (18), URG (23), WINCH (28), IO (29) and PWR (30). */
#define GUARDED_SIGNALS (0xFFFFFFFEu & ~((1u << 17) | (1u << 18) | (1u << 23) | (1u << 28) | (1u << 29) | (1u << 30)))
#define SEND_SIG_PRIV_INFO 1                     /* include/linux/sched/signal.h: the kernel's own signal */
#define SI_USER 0
#define SI_QUEUE (-1)
#define SI_TKILL (-6)

RAW_TRACEPOINT_PROBE(signal_generate)
{
    int sig = (int)ctx->args[0];
    if (sig <= 0 || sig >= 32 || !((GUARDED_SIGNALS >> sig) & 1))
        return 0;
    void *task = (void *)ctx->args[2];
    u32 target = kread_u32(task, OFF_TASK_TGID);
    if (!guarded_tgids.lookup(&target))
        return 0;
    u32 sender = bpf_get_current_pid_tgid() >> 32;
    if (sender == target)
        return 0;                                /* the agent's own (a thread ending another, a re-raise) */
    u64 info = ctx->args[1];
    int code = SI_USER;                          /* SEND_SIG_NOINFO (0): kill(2)'s own */
    if (info == SEND_SIG_PRIV_INFO)
        return 0;
    if (info)
        code = (int)kread_u32((void *)info, OFF_SIGINFO_CODE);
    if (code != SI_USER && code != SI_QUEUE && code != SI_TKILL)
        return 0;

    u32 zero = 0;
    struct enforce_event *e = guard_scratch.lookup(&zero);
    if (!e)
        return 0;
    fill_header(&e->hdr, EV_ENFORCE);            /* the sender */
    e->action = ACT_SEEN_AGENT_SIGNAL;
    e->rule = sig;
    e->family = 0;
    e->dport = 0;
    e->peer_tgid = target;
    __builtin_memset(e->daddr, 0, sizeof(e->daddr));
    e->payload_len = 0;
    e->repeats = 0;
    emit(e, sizeof(*e), EV_ENFORCE);
    return 0;
}
