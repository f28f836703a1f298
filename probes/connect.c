/* connect.c - outbound connect() on AF_INET / AF_INET6 sockets.
 *
 * sys_enter_connect reads the sockaddr from user memory (uapi layout) and
 * drops every other family in the kernel; sys_exit_connect adds the result
 * (0, -EINPROGRESS, -ECONNREFUSED, -EPERM, ...). The socket type (TCP/UDP)
 * comes from socket() calls seen since the agent started; sockets older than
 * the agent report type 0 (unknown).
 */
#include "gpuguard.h"

#define AF_INET_ 2
#define AF_INET6_ 10

struct sockaddr_in_ {
    u16 family;
    u16 port;      /* network byte order */
    u8 addr[4];
};

struct sockaddr_in6_ {
    u16 family;
    u16 port;
    u32 flowinfo;
    u8 addr[16];
};

struct socket_args {
    u32 family;
    u32 type;
};

BPF_HASH(connect_pending, u64, struct connect_event, 4096);
BPF_HASH(socket_pending, u64, struct socket_args, 4096);
BPF_TABLE("lru_hash", u64, u32, socket_types, 65536);   /* tgid<<32|fd -> type */

TRACEPOINT_PROBE(syscalls, sys_enter_socket)
{
    if (args->family != AF_INET_ && args->family != AF_INET6_)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    struct socket_args s = {.family = args->family, .type = args->type & 0xf};
    socket_pending.update(&id, &s);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_socket)
{
    u64 id = bpf_get_current_pid_tgid();
    struct socket_args *s = socket_pending.lookup(&id);
    if (!s)
        return 0;
    if (args->ret >= 0) {
        u64 key = (id & 0xffffffff00000000ULL) | (u32)args->ret;
        u32 type = s->type;
        socket_types.update(&key, &type);
    }
    socket_pending.delete(&id);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
    u16 family = 0;
    if (bpf_probe_read_user(&family, sizeof(family), args->uservaddr) != 0)
        return 0;
    if (family != AF_INET_ && family != AF_INET6_)
        return 0;

    struct connect_event e = {};
    fill_header(&e.hdr, EV_CONNECT);
    e.family = family;
    e.fd = args->fd;
    if (family == AF_INET_) {
        struct sockaddr_in_ sa = {};
        bpf_probe_read_user(&sa, sizeof(sa), args->uservaddr);
        e.dport = bpf_ntohs(sa.port);
        __builtin_memcpy(e.daddr, sa.addr, 4);
    } else {
        struct sockaddr_in6_ sa = {};
        bpf_probe_read_user(&sa, sizeof(sa), args->uservaddr);
        e.dport = bpf_ntohs(sa.port);
        __builtin_memcpy(e.daddr, sa.addr, 16);
    }
    u64 id = bpf_get_current_pid_tgid();
    u64 key = (id & 0xffffffff00000000ULL) | (u32)args->fd;
    u32 *type = socket_types.lookup(&key);
    e.sock_type = type ? *type : 0;
    if (connect_pending.update(&id, &e) != 0)
        count_lost(EV_CONNECT);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
    u64 id = bpf_get_current_pid_tgid();
    struct connect_event *e = connect_pending.lookup(&id);
    if (!e)
        return 0;
    e->hdr.result = args->ret;
    emit(e, sizeof(*e), EV_CONNECT);
    connect_pending.delete(&id);
    return 0;
}
