/* gpu_dev.c - GPU device opens by device number, for every process on the host.
 *
 * A cgroup/dev program attached observe-only (it always returns 1) at the
 * cgroup2 root sees major:minor:access of every device open, before the
 * driver, whatever the path (dirfd-relative opens and renamed nodes made
 * anywhere included). Only GPU majors (gpu_majors, filled from /proc/devices:
 * nvidia*, drm, kfd, accel) reach user space, which names the node from its
 * number. The open's outcome is not seen here (README: blind spots).
 * Stable ABI: struct bpf_cgroup_dev_ctx is uapi. */
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
    struct gpu_open_event e = {};
    fill_header(&e.hdr, EV_GPU_OPEN);
    e.major = major;
    e.minor = ctx->minor;
    e.flags = access;           /* DEVCG_ACC_READ 2 | DEVCG_ACC_WRITE 4 */
    if (current_image_nolink())  /* a miner that deleted itself, or runs from a memfd */
        e.flags |= GPU_OPEN_IMAGE_NOLINK;
    emit(&e, sizeof(e), EV_GPU_OPEN);
    return 1;
}
