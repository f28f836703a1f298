/* cgroup.c - new cgroups, so enforcement can attach to a job's cgroup the
 * moment it is created (Slurm, kubelet and systemd create them before they
 * start the job's processes). Rare events; reported to user space only. */
#include "gpuguard.h"

BPF_PERCPU_ARRAY(cgroup_scratch, struct cgroup_event, 1);

TRACEPOINT_PROBE(cgroup, cgroup_mkdir)
{
    u32 zero = 0;
    struct cgroup_event *e = cgroup_scratch.lookup(&zero);
    if (!e)
        return 0;
    fill_header(&e->hdr, EV_CGROUP);
    e->id = args->id;
    e->level = args->level;
    e->root = args->root;
    TP_DATA_LOC_READ_STR(e->path, path, sizeof(e->path));
    /* wake the agent now: a new job cgroup may need enforcement before its first exec */
    if (priority_events.ringbuf_output(e, sizeof(*e), BPF_RB_FORCE_WAKEUP) != 0)
        count_lost(EV_CGROUP);
    return 0;
}
