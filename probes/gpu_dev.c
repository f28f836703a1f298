/* gpu_dev.c - GPU device opens by device number, whatever the path.
 *
 * A cgroup/dev program (attached by the agent to job cgroups; it always
 * returns 1, so it only observes) sees major:minor:access of every device
 * open in the cgroup, before the driver. For a GPU major (gpu_majors, filled
 * from /proc/devices: nvidia*, drm, kfd, accel) it annotates the open that
 * gpu_open.c already matched by path, or starts one for an open the path
 * match missed (dirfd-relative, renamed node); sys_exit_open* then reports it
 * with its result. Stable ABI only: struct bpf_cgroup_dev_ctx is uapi. */
#include "gpuguard.h"

#define DEVCG_DEV_CHAR 2
#define DEVCG_ACC_MKNOD 1

BPF_HASH(gpu_majors, u32, u32, 64);

int gpu_device_watch(struct bpf_cgroup_dev_ctx *ctx)
{
    u32 type = ctx->access_type & 0xffff;
    u32 access = ctx->access_type >> 16;
    u32 major = ctx->major;
    if (type != DEVCG_DEV_CHAR || access == DEVCG_ACC_MKNOD || !gpu_majors.lookup(&major))
        return 1;
    u64 id = bpf_get_current_pid_tgid();
    struct gpu_open_event *pending = gpu_pending.lookup(&id);
    if (pending) {
        pending->major = major;
        pending->minor = ctx->minor;
        return 1;
    }
    struct gpu_open_event e = {};
    fill_header(&e.hdr, EV_GPU_OPEN);
    e.major = major;
    e.minor = ctx->minor;
    e.flags = -1;   /* not known from this hook */
    if (gpu_pending.update(&id, &e) != 0)
        count_lost(EV_GPU_OPEN);
    return 1;
}
