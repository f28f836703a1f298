/* gpu_open.c - opens of GPU / accelerator device nodes.
 *
 * Matched in the kernel on the path prefix, so an open storm on other files
 * costs one 8-byte user read and four compares per call and never reaches
 * user space: /dev/nvidia* (nvidiactl, nvidia-uvm*, nvidia-caps/*),
 * /dev/dri/card*, /dev/dri/renderD*, /dev/kfd, /dev/accel/*.
 * Relative opens through a dirfd of /dev and device nodes made elsewhere do
 * not match a path: gpu_dev.c catches those by device number in job cgroups.
 */
#include "gpuguard.h"

#define HEAD_NVI STR8('/', 'd', 'e', 'v', '/', 'n', 'v', 'i')
#define HEAD_DRI STR8('/', 'd', 'e', 'v', '/', 'd', 'r', 'i')
#define HEAD_KFD STR8('/', 'd', 'e', 'v', '/', 'k', 'f', 'd')
#define HEAD_ACC STR8('/', 'd', 'e', 'v', '/', 'a', 'c', 'c')

BPF_HASH(gpu_pending, u64, struct gpu_open_event, 4096);

static __always_inline int is_gpu_path(const char *p, u64 head)
{
    if (head == HEAD_NVI)   /* /dev/nvidia... */
        return p[8] == 'd' && p[9] == 'i' && p[10] == 'a';
    if (head == HEAD_KFD)   /* exactly /dev/kfd */
        return p[8] == 0;
    if (head == HEAD_ACC)   /* /dev/accel/ */
        return p[8] == 'e' && p[9] == 'l' && p[10] == '/';
    if (head == HEAD_DRI) { /* /dev/dri/card* or /dev/dri/renderD* */
        if (p[8] != '/')
            return 0;
        if (p[9] == 'c' && p[10] == 'a' && p[11] == 'r' && p[12] == 'd')
            return 1;
        return p[9] == 'r' && p[10] == 'e' && p[11] == 'n' && p[12] == 'd' &&
               p[13] == 'e' && p[14] == 'r' && p[15] == 'D';
    }
    return 0;
}

static __always_inline int gpu_open_enter(const char *filename, int flags)
{
    u64 head = 0;
    if (bpf_probe_read_user(&head, sizeof(head), filename) != 0)
        return 0;
    if (head != HEAD_NVI && head != HEAD_DRI && head != HEAD_KFD && head != HEAD_ACC)
        return 0;
    struct gpu_open_event e = {};
    bpf_probe_read_user_str(e.path, sizeof(e.path), filename);
    if (!is_gpu_path(e.path, head))
        return 0;
    fill_header(&e.hdr, EV_GPU_OPEN);
    e.flags = flags;
    u64 id = bpf_get_current_pid_tgid();
    if (gpu_pending.update(&id, &e) != 0)
        count_lost(EV_GPU_OPEN);
    return 0;
}

static __always_inline int gpu_open_exit(long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    struct gpu_open_event *e = gpu_pending.lookup(&id);
    if (!e)
        return 0;
    e->hdr.result = ret;
    emit(e, sizeof(*e), EV_GPU_OPEN);
    gpu_pending.delete(&id);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
    return gpu_open_enter(args->filename, args->flags);
}

TRACEPOINT_PROBE(syscalls, sys_enter_open)
{
    return gpu_open_enter(args->filename, args->flags);
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat2)
{
    u64 flags = 0;   /* struct open_how starts with u64 flags (uapi) */
    bpf_probe_read_user(&flags, sizeof(flags), args->how);
    return gpu_open_enter(args->filename, (int)flags);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
    return gpu_open_exit(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_open)
{
    return gpu_open_exit(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat2)
{
    return gpu_open_exit(args->ret);
}
