/* gpuguard.h - event structs shared by every probe and by agent/decode.py.
 *
 * RULE FOR EVERY FILE IN probes/: read tracepoint fields (args->...), uapi
 * hook contexts (bpf_sock_addr, bpf_cgroup_dev_ctx, __sk_buff), BPF helpers
 * and user memory (bpf_probe_read_user*). A kernel-internal struct field
 * (task_struct, mm_struct, sock, ...) is read ONLY through kread_u32/kread_u64
 * at an OFF_* byte offset that the agent takes from the running kernel's BTF
 * at start-up (agent/btf.py) and proves on itself (agent/selfcheck.py).
 * Never name such a struct's members in C: the agent may compile against
 * generic distro headers whose layouts are wrong for this kernel (6.1 headers
 * put task_struct.real_parent at 2432, 6.18 at 1280) and the verifier would
 * not notice. tests/test_probe_rules.py enforces this.
 *
 * Layout changes here must be mirrored in agent/decode.py (checked by
 * tests/test_decode.py against the compiled sizes).
 */
#ifndef GPUGUARD_H
#define GPUGUARD_H

#include "vocab.h"   /* EV_* event kinds and ACT_* actions, generated from the proto enums */

#define MAX_CGROUP_LEVELS 16
#define CGROUP_PATH_LEN 192

#define TASK_COMM_LEN 16
#define FILENAME_LEN 256
#define JOB_ENV_LEN 32
#define MAX_ARGS 20
#define ARG_LEN 256
#define ARGS_BUF 2048
#define GPU_PATH_LEN 64
#define MAX_ENV_SCAN 64
#define ENV_STR_LEN 4096

/* connect flags */
#define CONNECT_SENDMSG 1   /* an unconnected UDP send (first one per socket and destination) */

/* exec flags */
#define EXEC_ARGS_TRUNCATED 1   /* more args than MAX_ARGS or buffer full */
#define EXEC_ARG_CLIPPED    2   /* one arg longer than ARG_LEN */
#define EXEC_ARGV_FAULT     4   /* a user-memory read of argv failed */

/* Build a little-endian u64 from 8 chars: compare 8 path bytes at once. */
#define STR8(a, b, c, d, e, f, g, h)                                       \
    ((u64)(a) | (u64)(b) << 8 | (u64)(c) << 16 | (u64)(d) << 24 |          \
     (u64)(e) << 32 | (u64)(f) << 40 | (u64)(g) << 48 | (u64)(h) << 56)

struct event_header {
    u64 ts_ns;        /* bpf_ktime_get_boot_ns() */
    u64 cgroup_id;    /* cgroup v2 id == inode of the cgroup dir */
    u32 kind;
    u32 tid;
    u32 tgid;
    u32 uid;
    u32 gid;
    s32 result;       /* syscall return value: 0 / fd / -errno */
    char comm[TASK_COMM_LEN];
};

struct exec_event {
    struct event_header hdr;
    u32 argc;
    u32 args_len;
    u32 flags;
    u32 _pad;
    char filename[FILENAME_LEN];
    char job_env[JOB_ENV_LEN];     /* value of SLURM_JOB_ID from the environment */
    u64 optmask;                   /* short option letters in argv (a-z: bits 0-25, A-Z: 26-51) */
    u32 ppid;                      /* real parent's tgid */
    u32 stdio;                     /* STDIO_SOCKET / STDIO_FIFO bits of fds 0-2 */
    char args[ARGS_BUF];           /* NUL-separated argv */
};

struct env_buf {
    char s[ENV_STR_LEN];
};

struct fork_event {
    struct event_header hdr;       /* the thread that forked */
    u32 child_tgid;
    u32 parent_tgid;               /* the child's real parent */
};

struct exit_event {
    struct event_header hdr;       /* result = raw task->exit_code */
    s32 code;                      /* exit status (exit_group argument & 0xff) */
    u32 signal;                    /* terminating signal, 0 for a normal exit */
};

struct connect_event {
    struct event_header hdr;
    u16 family;
    u16 dport;                     /* host byte order */
    u32 sock_type;                 /* SOCK_STREAM=1, SOCK_DGRAM=2 */
    u8 daddr[16];                  /* v4 in the first 4 bytes */
    u64 sk;                        /* the socket's address: matches connect_result_event.sk */
    u32 protocol;
    u32 flags;                     /* CONNECT_SENDMSG */
};

struct connect_result_event {
    struct event_header hdr;       /* result: 0 established, -errno when the handshake failed */
    u64 sk;
};

struct gpu_open_event {
    struct event_header hdr;
    s32 flags;                     /* access: 2 read, 4 write */
    u32 major;
    u32 minor;
    u32 _pad;
};

/* Something enforcement did or saw. For stratum events the header's pid may
 * be 0 (packet sent outside process context); cgroup_id is the socket's. */
#define PAYLOAD_EXCERPT 64

struct enforce_event {
    struct event_header hdr;
    u32 action;
    u32 rule;                      /* index into the policy's rule list */
    u16 family;
    u16 dport;
    u32 peer_tgid;                 /* pipe actions: the process at the pipe's other end */
    u8 daddr[16];
    u32 payload_len;               /* payload actions: bytes of payload[] filled */
    u32 _pad;
    u8 payload[PAYLOAD_EXCERPT];   /* payload actions: the first bytes of the packet that matched */
};

struct cgroup_event {
    struct event_header hdr;
    u64 id;
    s32 level;
    s32 root;
    char path[CGROUP_PATH_LEN];
};

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(lost, u64, EV_KINDS);

static __always_inline void count_lost(u32 kind)
{
    u64 *n = lost.lookup(&kind);
    if (n)
        (*n)++;
}

/* Submit without waking the reader: the agent drains the ring on a short timer
 * (agent/loader.py), which saves a wakeup per event on hot paths. */
static __always_inline void emit(void *e, u32 size, u32 kind)
{
    if (events.ringbuf_output(e, size, BPF_RB_NO_WAKEUP) != 0)
        count_lost(kind);
}

/* Jobs switched to monitor mode: enforcement skips a task when any of its
 * ancestor cgroups is listed here (scopes may sit above the job, see
 * agent/enforce.py). Checked by every enforcement program. */
BPF_HASH(exempt_scopes, u64, u32, 4096);

static __always_inline int task_exempt(void)
{
    for (int level = 0; level < MAX_CGROUP_LEVELS; level++) {
        u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (!id)
            return 0;
        if (exempt_scopes.lookup(&id))
            return 1;
    }
    return 0;
}

/* Kernel-struct fields at BTF offsets (the OFF_* constants come from agent/btf.py). */
static __always_inline u64 kread_u64(void *base, u32 off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)base + off);
    return v;
}

static __always_inline u32 kread_u32(void *base, u32 off)
{
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)base + off);
    return v;
}

/* An array of pointers (not a struct: no layout to get wrong): element i. */
static __always_inline u64 kread_array_u64(void *base, u32 i)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)base + (u64)i * 8);
    return v;
}

#define STDIO_SOCKET(fd) (1U << (fd))        /* fd 0, 1 or 2 is an inet/inet6 socket */
#define STDIO_FIFO(fd) (1U << ((fd) + 4))    /* ... a pipe or FIFO */
#define STDIO_UNIX(fd) (1U << ((fd) + 8))    /* ... another socket (unix: socketpairs, launchers) */
#define S_IFMT_ 0170000
#define S_IFSOCK_ 0140000
#define S_IFIFO_ 0010000

/* What the current task's fds 0-2 are (after exec's close-on-exec): a shell whose stdio is a
 * socket is a reverse shell, whatever language set it up. */
static __always_inline u32 stdio_kinds(void)
{
    void *task = (void *)bpf_get_current_task();
    void *files = (void *)kread_u64(task, OFF_TASK_FILES);
    void *fdt = files ? (void *)kread_u64(files, OFF_FILES_FDT) : 0;
    void *fds = fdt ? (void *)kread_u64(fdt, OFF_FDTABLE_FD) : 0;
    u32 bits = 0;
    if (!fds)
        return 0;
    for (u32 fd = 0; fd < 3; fd++) {
        void *file = (void *)kread_array_u64(fds, fd);
        void *inode = file ? (void *)kread_u64(file, OFF_FILE_INODE) : 0;
        if (!inode)
            continue;
        u32 fmt = kread_u32(inode, OFF_INODE_MODE) & S_IFMT_;   /* i_mode is 16 bits, little-endian */
        if (fmt == S_IFSOCK_) {
            /* the socket sits next to its inode in struct socket_alloc; its sock starts with sock_common */
            void *sock = (char *)inode - OFF_SOCKALLOC_INODE + OFF_SOCKALLOC_SOCKET;
            void *sk = (void *)kread_u64(sock, OFF_SOCKET_SK);
            u32 family = sk ? kread_u32(sk, OFF_SK_FAMILY) & 0xffff : 0;
            bits |= (family == 2 || family == 10) ? STDIO_SOCKET(fd) : STDIO_UNIX(fd);
        }
        else if (fmt == S_IFIFO_)
            bits |= STDIO_FIFO(fd);
    }
    return bits;
}

/* Pipes and FIFOs on fds 0-2, for reverse shells wired through them (`nc host port | sh`, mkfifo
 * loops). A pipe is named by its inode's address and number (both: an address alone can be reused
 * after the pipe is freed) and by the end a task holds: fd 0 reads, fds 1 and 2 write. A shell and
 * the process that feeds it hold opposite ends of one pipe; a child that inherits the shell's stdio
 * holds the same ends as the shell, so it never matches. */
#define PIPE_READ 0
#define PIPE_WRITE 1

struct pipe_key {
    u64 inode;
    u64 ino;
    u32 end;
    u32 _pad;
};

struct pipe_holder {
    u32 tgid;
    u32 rule;                      /* shell_pipes: the rule that watches the shell */
};

/* shell_pipes: pipe ends on the stdio of a watched shell (kill_at_exec writes them);
 * net_pipes: pipe ends on the stdio of a process that connected out (the connect hooks write them). */
BPF_TABLE("lru_hash", struct pipe_key, struct pipe_holder, shell_pipes, 16384);
BPF_TABLE("lru_hash", struct pipe_key, struct pipe_holder, net_pipes, 16384);

/* The pipe ends on the current task's fds 0-2 (keys[fd].inode == 0: not a pipe). */
static __always_inline void stdio_pipes(struct pipe_key keys[3])
{
    void *task = (void *)bpf_get_current_task();
    void *files = (void *)kread_u64(task, OFF_TASK_FILES);
    void *fdt = files ? (void *)kread_u64(files, OFF_FILES_FDT) : 0;
    void *fds = fdt ? (void *)kread_u64(fdt, OFF_FDTABLE_FD) : 0;
    if (!fds)
        return;
    for (u32 fd = 0; fd < 3; fd++) {
        void *file = (void *)kread_array_u64(fds, fd);
        void *inode = file ? (void *)kread_u64(file, OFF_FILE_INODE) : 0;
        if (!inode || (kread_u32(inode, OFF_INODE_MODE) & S_IFMT_) != S_IFIFO_)
            continue;
        keys[fd].inode = (u64)inode;
        keys[fd].ino = kread_u64(inode, OFF_INODE_INO);
        keys[fd].end = fd == 0 ? PIPE_READ : PIPE_WRITE;
    }
}

/* The key of the other end of the same pipe. */
static __always_inline struct pipe_key pipe_peer(struct pipe_key *k)
{
    struct pipe_key peer = *k;
    peer.end = k->end == PIPE_READ ? PIPE_WRITE : PIPE_READ;
    return peer;
}

static __always_inline u32 real_parent_tgid(void *task)
{
    void *parent = (void *)kread_u64(task, OFF_TASK_REAL_PARENT);
    return parent ? kread_u32(parent, OFF_TASK_TGID) : 0;
}

/* Option letters, so a kill rule can say "ssh, but only with -R/-D/-w".
 * The first letter of a short-option cluster always counts ("-R8080:h:22",
 * "-oExitOnForwardFailure" -> R, o); further letters only when the whole
 * cluster is at most 4 letters ("-NfR" -> N, f, R), since longer clusters are
 * usually an option glued to its value. n counts the terminating NUL. */
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

static __always_inline void fill_header(struct event_header *h, u32 kind)
{
    u64 id = bpf_get_current_pid_tgid();
    u64 ug = bpf_get_current_uid_gid();
    h->ts_ns = bpf_ktime_get_boot_ns();
    h->cgroup_id = bpf_get_current_cgroup_id();
    h->kind = kind;
    h->tid = (u32)id;
    h->tgid = id >> 32;
    h->uid = (u32)ug;
    h->gid = ug >> 32;
    h->result = 0;
    bpf_get_current_comm(&h->comm, sizeof(h->comm));
}

#endif
