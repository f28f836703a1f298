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
#define CONNECT_IMAGE_NOLINK 2   /* the connecting task's image had no link on disk: deleted after it started, or a memfd */

/* gpu_open flags, beside the access bits (2 read, 4 write) */
#define GPU_OPEN_IMAGE_NOLINK 0x100   /* the opening task's image had no link on disk */

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
    u32 args_total;                /* mm->arg_end - arg_start: the whole argv's size, however much was read */
    char filename[FILENAME_LEN];
    char job_env[JOB_ENV_LEN];     /* value of SLURM_JOB_ID from the environment */
    u64 optmask;                   /* short option letters in argv (a-z: bits 0-25, A-Z: 26-51) */
    u32 ppid;                      /* real parent's tgid */
    u32 stdio;                     /* STDIO_SOCKET / STDIO_FIFO bits of fds 0-2 */
    u32 traits;                    /* TRAIT_* bits (vocab.h): what the image is, whatever its name */
    u32 tty;                       /* 1 + the pts number of the first pty slave on fds 0-2 (0: none) */
    u64 exe_ino;                   /* the new image's inode and its filesystem's device (kernel encoding): the */
    u32 exe_dev;                   /* file that runs, whatever its path names later (agent/exe_hash.py) */
    u32 exe_pad;
    u64 exe_ctime_ns;              /* its change time: a rewrite in place changes it, and no user can set it back
                                    * (mtime can be: touch -d), so (dev, inode, ctime) names the content that ran */
    char args[ARGS_BUF];           /* NUL-separated argv */
};

#define MAX_HOOK_VARS 4            /* interpreter start-up variables whose values are searched, per exec */
#define HOOK_VALUE_SCAN 192        /* bytes of each such variable searched for a staging path */

struct env_buf {
    char s[ENV_STR_LEN];
    u64 hooks[MAX_HOOK_VARS];      /* where each interpreter start-up variable is (user address), in order */
    /* in memory, not in registers: a register the verifier knows exactly would make every
     * combination of traits a separate state in the environment loop */
    u32 nhooks;
    u32 traits;
    u32 skipping;                  /* read_argv (exec.c): inside a clipped argument */
    u32 _pad;
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
    u32 flags;                     /* CONNECT_SENDMSG | CONNECT_IMAGE_NOLINK */
    u32 repeats;                   /* identical connects (process, destination) folded into this one in the kernel */
    u32 _pad;
};

struct connect_result_event {
    struct event_header hdr;       /* result: 0 established, -errno when the handshake failed */
    u64 sk;
};

/* A TCP connection from off the node reached a listening socket (connect.c): no process yet (pid 0), the
 * header's cgroup is the listener's (the child socket inherits it). */
struct inbound_event {
    struct event_header hdr;
    u16 family;
    u16 lport;                     /* the listening port, host byte order */
    u16 rport;                     /* the peer's port */
    u16 _pad;
    u8 raddr[16];                  /* the peer; v4 as v4-mapped */
    u32 repeats;                   /* connections from this peer to this port folded into this one */
    u32 _pad2;
};

struct gpu_open_event {
    struct event_header hdr;
    s32 flags;                     /* access: 2 read, 4 write; GPU_OPEN_IMAGE_NOLINK */
    u32 major;
    u32 minor;
    u32 _pad;
};

/* listen() on a TCP socket (connect.c), in the listening process's own context. */
struct listen_event {
    struct event_header hdr;
    u16 family;
    u16 port;                      /* host byte order */
    u32 _pad;
    u8 addr[16];                   /* the bound address; v4 as v4-mapped */
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
    u32 repeats;                   /* identical reports (process, action, destination) folded into this one */
    u8 payload[PAYLOAD_EXCERPT];   /* payload actions: the first bytes of the packet that matched */
};

/* First bytes of a flow that say whom it is for (flow.c): a TLS ClientHello, a DNS query or answer, the
 * first datagrams of a UDP flow. Ingress records (DNS answers) have no process: pid 0, the socket's cgroup. */
#define FLOW_DATA 512                /* power of two: the copy length is masked into it */
#define FLOW_TLS_HELLO 1
#define FLOW_DNS_QUERY 2
#define FLOW_DNS_ANSWER 3
#define FLOW_UDP_FIRST 4
#define FLOW_UDP_INBOUND 5           /* a datagram from off the node to a socket that never sent to that peer */

struct flow_event {
    struct event_header hdr;
    u32 what;                      /* FLOW_* */
    u32 len;                       /* payload bytes in the packet (data[] holds min(len, FLOW_DATA)) */
    u16 family;
    u16 rport;                     /* the remote port, host order: destination on egress, source on ingress */
    u16 lport;
    u8 proto;                      /* 6 TCP, 17 UDP */
    u8 _pad;
    u8 raddr[16];                  /* the remote address (v4 as v4-mapped) */
    u64 cookie;                    /* socket cookie */
    u8 data[FLOW_DATA];
};

/* A socket that can bypass connect(): raw IP or ICMP (cgroup/sock_create at the root). */
struct socket_event {
    struct event_header hdr;       /* result: 0, or -EPERM when a policy denied it */
    u32 family;
    u32 type;
    u32 protocol;
    u32 rule;                      /* denied: index into the policy's rule list */
};

struct cgroup_event {
    struct event_header hdr;
    u64 id;
    s32 level;
    s32 root;
    char path[CGROUP_PATH_LEN];
};

/* ---- maps shared by the two BPF objects. The capture probes (exec, fork_exit, connect, gpu_dev, cgroup, flow)
 * and the enforcement programs (enforce_*.c) are compiled as two objects (agent/loader.py): enforcement can be
 * built, verified and replaced on its own, and a capture-only agent carries none of it. The capture object defines
 * each map below and shares it (BCC's "maps/shared" namespace); the enforcement object, compiled with
 * -DGG_ENFORCE_OBJECT in the same process afterwards, declares the same names "extern" and so writes the same
 * kernel maps (the same ring, the same per-job budget, the same task origins). Per-CPU scratch maps are not
 * shared: each object has its own. */
#ifdef GG_ENFORCE_OBJECT
#define GG_SHARED_TABLE(_type, _key, _leaf, _name, _max) BPF_TABLE("extern", _key, _leaf, _name, _max)
#define GG_SHARED_RING(_name, _pages)                                                           \
    struct _name##_table_t {                                                                  \
        int key;                                                                              \
        u32 leaf;                                                                             \
        int (*ringbuf_output)(void *, u64, u64);                                              \
        void *(*ringbuf_reserve)(u64);                                                        \
        void (*ringbuf_submit)(void *, u64);                                                  \
        void (*ringbuf_discard)(void *, u64);                                                 \
        u32 max_entries;                                                                      \
        int flags;                                                                            \
    };                                                                                        \
    __attribute__((section("maps/extern"))) struct _name##_table_t _name
#define GG_SHARED_SK_STORAGE(_name, _leaf)                                                      \
    struct _name##_table_t {                                                                  \
        int key;                                                                              \
        _leaf leaf;                                                                           \
        void *(*sk_storage_get)(void *, void *, int);                                         \
        int (*sk_storage_delete)(void *);                                                     \
        u32 flags;                                                                            \
    };                                                                                        \
    __attribute__((section("maps/extern"))) struct _name##_table_t _name
#else
#define GG_SHARE(_name) __attribute__((section("maps/shared"))) struct _name##_table_t __##_name
#define GG_SHARED_TABLE(_type, _key, _leaf, _name, _max) BPF_TABLE(_type, _key, _leaf, _name, _max); GG_SHARE(_name)
#define GG_SHARED_RING(_name, _pages) BPF_RINGBUF_OUTPUT(_name, _pages); GG_SHARE(_name)
#define GG_SHARED_SK_STORAGE(_name, _leaf) BPF_SK_STORAGE(_name, _leaf); GG_SHARE(_name)
#endif

/* Two rings: what must never be lost (exec, fork, exit, cgroup, enforcement) has its own, so a flood of
 * connects, payload or flow records from one job cannot crowd it out. */
GG_SHARED_RING(events, RINGBUF_PAGES);
GG_SHARED_RING(priority_events, PRIORITY_PAGES);
GG_SHARED_TABLE("percpu_array", int, u64, lost, EV_KINDS);

static __always_inline int priority_kind(u32 kind)
{
    return kind == EV_EXEC || kind == EV_FORK || kind == EV_EXIT || kind == EV_CGROUP || kind == EV_ENFORCE;
}

static __always_inline void count_lost(u32 kind)
{
    u64 *n = lost.lookup(&kind);
    if (n)
        (*n)++;
}

/* What each cgroup could not report, and its budget on the shared ring. A flood from one job costs that job
 * fidelity, never another job or the priority ring: records of the shared ring's kinds (connects, flows, GPU
 * opens, sockets) beyond capture_budget[0] per window of capture_budget[1] ns are not submitted but counted
 * here, per cgroup and kind; so are records the full ring refused. The agent reads this map each second and
 * turns what grew into capture_loss records naming the job, kinds, counts and window (agent/capture_loss.py). */
struct job_capture {
    u64 window;                     /* budget window number: ts / window ns */
    u64 used;                       /* shared-ring records submitted in this window */
    u64 suppressed[EV_KINDS];       /* cumulative: over the budget */
    u64 lost[EV_KINDS];             /* cumulative: the ring was full */
    u64 first_ns;                   /* boot-time ns of the first record not reported, and of the last */
    u64 last_ns;
};

GG_SHARED_TABLE("lru_hash", u64, struct job_capture, job_capture, 16384);
GG_SHARED_TABLE("array", int, u64, capture_budget, 2);
BPF_PERCPU_ARRAY(capture_zero, struct job_capture, 1);      /* never written: a new entry's value (off the stack) */

static __always_inline struct job_capture *capture_of(u64 cgroup)
{
    struct job_capture *c = job_capture.lookup(&cgroup);
    if (c)
        return c;
    u32 zero = 0;
    struct job_capture *fresh = capture_zero.lookup(&zero);
    if (!fresh)
        return 0;
    job_capture.update(&cgroup, fresh);
    return job_capture.lookup(&cgroup);
}

static __always_inline void note_unreported(struct job_capture *c, u32 kind, u64 ts, int lost)
{
    if (kind >= EV_KINDS)
        return;
    if (lost)
        __sync_fetch_and_add(&c->lost[kind], 1);
    else
        __sync_fetch_and_add(&c->suppressed[kind], 1);
    if (!c->first_ns)
        c->first_ns = ts;
    c->last_ns = ts;
}

/* 1: this cgroup has used its window's budget (the record is counted, not submitted). */
static __always_inline int over_budget(struct event_header *h, u32 kind)
{
    u32 k_limit = 0, k_window = 1;
    u64 *limit = capture_budget.lookup(&k_limit);
    u64 *window = capture_budget.lookup(&k_window);
    if (!limit || !*limit || !window || !*window)
        return 0;
    struct job_capture *c = capture_of(h->cgroup_id);
    if (!c)
        return 0;
    u64 w = h->ts_ns / *window;
    if (c->window != w) {
        c->window = w;
        c->used = 0;
    }
    if (__sync_fetch_and_add(&c->used, 1) < *limit)
        return 0;
    note_unreported(c, kind, h->ts_ns, 0);
    return 1;
}

/* The bulk ring is submitted to without waking the reader: the agent drains it on a
 * timer (agent/main.py), which saves a wakeup per event on hot paths. The priority ring
 * (exec, exit, fork, cgroup, enforcement) wakes the reader adaptively: the kernel
 * notifies only when the reader had caught up, i.e. once for the first record after a
 * drain, so an idle agent can sleep long and still sees an exec at once. */
static __always_inline void emit(void *e, u32 size, u32 kind)
{
    struct event_header *h = e;
    int priority = priority_kind(kind);
    if (!priority && over_budget(h, kind))
        return;
    long err = priority ? priority_events.ringbuf_output(e, size, 0)
                        : events.ringbuf_output(e, size, BPF_RB_NO_WAKEUP);
    if (err != 0) {
        count_lost(kind);
        struct job_capture *c = capture_of(h->cgroup_id);
        if (c)
            note_unreported(c, kind, h->ts_ns, 1);
    }
}

/* Jobs switched to monitor mode: enforcement skips a task when any of its
 * ancestor cgroups is listed here (scopes may sit above the job, see
 * agent/enforce.py). Checked by every enforcement program. */
GG_SHARED_TABLE("hash", u64, u32, exempt_scopes, 4096);

/* Raw IP, ICMP and packet sockets refused per scope: the root sock_create hook and the packet-socket probes on
 * socket sends and receives (flow.c) read it, the enforcer writes it. */
#define SOCKET_KIND_RAW 1          /* deny_socket_scopes value bits */
#define SOCKET_KIND_ICMP 2
#define SOCKET_KIND_PACKET 4
struct socket_deny {
    u32 kinds;                     /* SOCKET_KIND_* refused in this scope */
    u32 rule[3];                   /* for each kind (raw, icmp, packet): index into the policy's rule list */
};
GG_SHARED_TABLE("hash", u64, struct socket_deny, deny_socket_scopes, 1024);

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

/* Job escape (probes/enforce_escape.c): the job scope each task of a watched job belongs to, so a move out of
 * it can be recognised when it happens. Kept here because the fork probe (fork_exit.c) hands it to children. */
struct task_origin {
    u64 scope;                     /* the job's cgroup id */
    u32 level;                     /* its level in the hierarchy */
    u32 rule;                      /* escape rule index (enforce.py rule_ids) */
    u32 kill;                      /* 1: kill the process that moves a job task out, when it is in the job */
    u32 _pad;
};

GG_SHARED_TABLE("lru_hash", u32, struct task_origin, task_origins, 65536);

static __always_inline void escape_inherit(u32 parent, u32 child)
{
    struct task_origin *o = task_origins.lookup(&parent);
    if (o) {
        struct task_origin copy = *o;
        task_origins.update(&child, &copy);
    } else {
        task_origins.delete(&child);         /* a reused pid carries nothing over */
    }
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

/* n bytes of a kernel struct (an address) at a BTF offset. */
static __always_inline void kread_bytes(void *dst, u32 n, void *base, u32 off)
{
    bpf_probe_read_kernel(dst, n, (char *)base + off);
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
#define STDIO_PTY(fd) (1U << ((fd) + 12))    /* ... a pty slave (/dev/pts/N) */
#define S_IFCHR_ 0020000
#define PTS_MAJOR_FIRST 136                  /* Unix98 pty slaves: majors 136-143 */
#define PTS_MAJOR_LAST 143
#define S_IFMT_ 0170000
#define S_IFSOCK_ 0140000
#define S_IFIFO_ 0010000

/* The task's open-file array (files->fdt->fd): element i is fd i's struct file, or 0. */
static __always_inline void *task_fds(void *task)
{
    void *files = (void *)kread_u64(task, OFF_TASK_FILES);
    void *fdt = files ? (void *)kread_u64(files, OFF_FILES_FDT) : 0;
    return fdt ? (void *)kread_u64(fdt, OFF_FDTABLE_FD) : 0;
}

/* What the current task's fds 0-2 are (after exec's close-on-exec): a shell whose stdio is a
 * socket is a reverse shell, whatever language set it up. *tty (when given) receives 1 + the pts number
 * of the first pty slave among them: the agent looks for the process holding its master. */
static __always_inline u32 stdio_kinds_tty(u32 *tty)
{
    void *fds = task_fds((void *)bpf_get_current_task());
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
        else if (fmt == S_IFCHR_) {
            u32 rdev = kread_u32(inode, OFF_INODE_RDEV);           /* kernel dev_t: major << 20 | minor */
            u32 major = rdev >> 20;
            if (major >= PTS_MAJOR_FIRST && major <= PTS_MAJOR_LAST) {
                bits |= STDIO_PTY(fd);
                if (tty && !*tty)
                    *tty = (((major - PTS_MAJOR_FIRST) << 20) | (rdev & 0xFFFFF)) + 1;
            }
        }
    }
    return bits;
}

static __always_inline u32 stdio_kinds(void)
{
    return stdio_kinds_tty(0);
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
GG_SHARED_TABLE("lru_hash", struct pipe_key, struct pipe_holder, shell_pipes, 16384);
GG_SHARED_TABLE("lru_hash", struct pipe_key, struct pipe_holder, net_pipes, 16384);

/* The pipe ends on the current task's fds 0-2 (keys[fd].inode == 0: not a pipe). */
static __always_inline void stdio_pipes(struct pipe_key keys[3])
{
    void *fds = task_fds((void *)bpf_get_current_task());
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

/* Who holds the other end of one of these stdio pipes as a watched shell's stdio (shell_pipes) or as the stdio of a
 * process that reached the network (net_pipes) - never `self`; NULL when nobody does. Two functions, one per map:
 * BCC rewrites map calls by name and cannot take a map as a parameter. */
static __always_inline struct pipe_holder *shell_at_other_end(struct pipe_key keys[3], u32 self)
{
    for (int fd = 0; fd < 3; fd++) {
        if (!keys[fd].inode)
            continue;
        struct pipe_key other = pipe_peer(&keys[fd]);
        struct pipe_holder *h = shell_pipes.lookup(&other);
        if (h && h->tgid != self)
            return h;
    }
    return 0;
}

static __always_inline struct pipe_holder *network_at_other_end(struct pipe_key keys[3], u32 self)
{
    for (int fd = 0; fd < 3; fd++) {
        if (!keys[fd].inode)
            continue;
        struct pipe_key other = pipe_peer(&keys[fd]);
        struct pipe_holder *h = net_pipes.lookup(&other);
        if (h && h->tgid != self)
            return h;
    }
    return 0;
}

/* Remember these pipe ends as those of a process that reached the network (a connect out, a listen). */
static __always_inline void remember_network_ends(struct pipe_key keys[3], u32 self)
{
    struct pipe_holder mine = {.tgid = self};
    for (int fd = 0; fd < 3; fd++)
        if (keys[fd].inode)
            net_pipes.update(&keys[fd], &mine);
}

/* Ptys: a shell on a pty whose master is held by a process that connected out (socat ...,pty; pty.spawn after a
 * connect) is a reverse shell. The connect hooks remember processes that connected off the node (net_tgids, when
 * pty_watch[0] says a policy needs it); at a watched shell's exec, the kill program looks at its parent: if the
 * parent connected out and holds the master of the pty on the shell's stdio (its ptmx fd's tty->link is the
 * slave on the shell's fd), the shell dies. sshd, tmux, script and jupyter hold masters too, but never connect
 * out of the node. */
#define PTMX_RDEV ((5U << 20) | 2U)          /* /dev/ptmx and /dev/pts/ptmx, kernel dev_t */
#define PTY_SCAN_FDS 16                      /* the parent's fds looked at for the master */

GG_SHARED_TABLE("lru_hash", u32, u32, net_tgids, 16384);
GG_SHARED_TABLE("array", int, u32, pty_watch, 1);

static __always_inline void record_connected_out(u32 tgid)
{
    u32 zero = 0, one = 1;
    u32 *watch = pty_watch.lookup(&zero);
    if (watch && *watch)
        net_tgids.update(&tgid, &one);
}

/* The tty_struct behind a tty file (file->private_data is its tty_file_private). */
static __always_inline u64 file_tty(void *file)
{
    void *priv = (void *)kread_u64(file, OFF_FILE_PRIVATE);
    return priv ? kread_u64(priv, OFF_TTYFP_TTY) : 0;
}

/* The slave tty_struct of the first pty slave on the current task's fds 0-2, or 0. */
static __always_inline u64 stdio_pty_slave(void)
{
    void *fds = task_fds((void *)bpf_get_current_task());
    if (!fds)
        return 0;
    for (u32 fd = 0; fd < 3; fd++) {
        void *file = (void *)kread_array_u64(fds, fd);
        void *inode = file ? (void *)kread_u64(file, OFF_FILE_INODE) : 0;
        if (!inode || (kread_u32(inode, OFF_INODE_MODE) & S_IFMT_) != S_IFCHR_)
            continue;
        u32 major = kread_u32(inode, OFF_INODE_RDEV) >> 20;
        if (major >= PTS_MAJOR_FIRST && major <= PTS_MAJOR_LAST)
            return file_tty(file);
    }
    return 0;
}

/* Does task hold, among its first fds, the master of the pty whose slave is `slave`? */
static __always_inline int holds_master_of(void *task, u64 slave)
{
    void *fds = task_fds(task);
    if (!fds)
        return 0;
    for (u32 fd = 0; fd < PTY_SCAN_FDS; fd++) {
        void *file = (void *)kread_array_u64(fds, fd);
        void *inode = file ? (void *)kread_u64(file, OFF_FILE_INODE) : 0;
        if (!inode || (kread_u32(inode, OFF_INODE_MODE) & S_IFMT_) != S_IFCHR_ ||
            kread_u32(inode, OFF_INODE_RDEV) != PTMX_RDEV)
            continue;
        u64 master = file_tty(file);
        if (master && kread_u64((void *)master, OFF_TTY_LINK) == slave)
            return 1;
    }
    return 0;
}

static __always_inline u32 real_parent_tgid(void *task)
{
    void *parent = (void *)kread_u64(task, OFF_TASK_REAL_PARENT);
    return parent ? kread_u32(parent, OFF_TASK_TGID) : 0;
}

/* Option letters, so a kill rule can say "ssh, but only with -R/-D/-w" (Python twin:
 * gpuguard/vocab.py option_letters). Every letter of a short-option cluster counts, however long
 * ("-fNqCD" -> f, N, q, C, D), up to the first letter that takes a value in ssh's grammar
 * ("-oDynamicForward=1080" -> o, "-lwww" -> l) or the first non-letter ("-R8080:h:22" -> R).
 * n counts the terminating NUL; p holds at least n bytes. */
#define OPTION_CLUSTER_MAX 48
/* B b c D E e F I i J L l m O o P p Q R S W w: letter_bit() positions */
#define VALUE_LETTERS ((1ULL << ('b' - 'a')) | (1ULL << ('c' - 'a')) | (1ULL << ('e' - 'a')) |           \
                       (1ULL << ('i' - 'a')) | (1ULL << ('l' - 'a')) | (1ULL << ('m' - 'a')) |           \
                       (1ULL << ('o' - 'a')) | (1ULL << ('p' - 'a')) | (1ULL << ('w' - 'a')) |           \
                       (1ULL << (26 + 'B' - 'A')) | (1ULL << (26 + 'D' - 'A')) | (1ULL << (26 + 'E' - 'A')) | \
                       (1ULL << (26 + 'F' - 'A')) | (1ULL << (26 + 'I' - 'A')) | (1ULL << (26 + 'J' - 'A')) | \
                       (1ULL << (26 + 'L' - 'A')) | (1ULL << (26 + 'O' - 'A')) | (1ULL << (26 + 'P' - 'A')) | \
                       (1ULL << (26 + 'Q' - 'A')) | (1ULL << (26 + 'R' - 'A')) | (1ULL << (26 + 'S' - 'A')) | \
                       (1ULL << (26 + 'W' - 'A')))

static __always_inline u64 letter_bit(char c)
{
    if (c >= 'a' && c <= 'z')
        return 1ULL << (c - 'a');
    if (c >= 'A' && c <= 'Z')
        return 1ULL << (26 + c - 'A');
    return 0;
}

/* acc is map memory, not a register: a register the verifier knows exactly would make every combination
 * of letters a separate state across the argv and cluster loops (the verifier's 1M-instruction limit). */
static __always_inline void option_letters(const char *p, int n, u64 *acc)
{
    if (n < 3 || p[0] != '-' || p[1] == '-')
        return;
    for (int k = 1; k <= OPTION_CLUSTER_MAX; k++) {
        if (k >= n - 1)
            break;
        u64 b = letter_bit(p[k]);
        if (!b)
            break;
        *acc |= b;
        if (b & VALUE_LETTERS)
            break;
    }
}

/* A record's header in two halves: who and when (what a fold needs to decide), then the rest (uid, gid, cgroup,
 * comm: three more helper calls), which a hook that folds repeats fills only for what it reports. */
static __always_inline void fill_task(struct event_header *h)
{
    u64 id = bpf_get_current_pid_tgid();
    h->ts_ns = bpf_ktime_get_boot_ns();
    h->tid = (u32)id;
    h->tgid = id >> 32;
}

static __always_inline void fill_identity(struct event_header *h, u32 kind)
{
    u64 ug = bpf_get_current_uid_gid();
    h->cgroup_id = bpf_get_current_cgroup_id();
    h->kind = kind;
    h->uid = (u32)ug;
    h->gid = ug >> 32;
    h->result = 0;
    bpf_get_current_comm(&h->comm, sizeof(h->comm));
}

static __always_inline void fill_header(struct event_header *h, u32 kind)
{
    fill_task(h);
    fill_identity(h, kind);
}

/* A record made outside any process's context (softirq, a timer): no process named, never the bystander's. */
static __always_inline void no_process(struct event_header *h)
{
    h->tid = h->tgid = 0;
    __builtin_memset(h->comm, 0, TASK_COMM_LEN);
}

/* An address as records keep it: 16 bytes, v4 as v4-mapped (as the flow hooks and the enforcement records do). */
static __always_inline void addr16(u8 out[16], u32 family, const u8 *v4, const u8 *v6)
{
    if (family == 2) {                         /* AF_INET */
        __builtin_memset(out, 0, 10);
        out[10] = out[11] = 0xff;
        __builtin_memcpy(&out[12], v4, 4);
    } else {
        __builtin_memcpy(out, v6, 16);
    }
}

/* Loopback or unspecified (v4 as v4-mapped): traffic that does not leave the node. */
static __always_inline int on_node(const u8 *addr)
{
    u64 hi = 0, lo = 0;
    __builtin_memcpy(&hi, addr, 8);
    __builtin_memcpy(&lo, addr + 8, 8);
    if (hi == 0 && (lo == 0 || lo == 0x0100000000000000ULL))          /* :: and ::1 */
        return 1;
    return hi == 0 && (lo & 0xffffffffULL) == 0xffff0000ULL && (addr[12] == 127 || (lo >> 32) == 0);
}

/* Who sends a packet. Packet hooks run wherever the kernel transmits from - for TCP often softirq or a timer, in
 * whatever task happens to be current - so `current` is not the sender. A TCP socket's owner (the process that
 * connected it) is written on the socket itself at the connect hook, which runs in that process's context; a
 * packet's sender is then its socket's owner. sk_storage is freed with the socket, and no flood of other sockets
 * can evict it (an LRU map could be flushed by one). Sockets with no owner recorded (accepted, UDP, a folded
 * repeat connect, made before the agent) fall back to `current` only when it is in the socket's cgroup; otherwise
 * the sender is unknown (pid 0): never blame, and never kill, a bystander. */
struct sock_owner {
    u32 tgid;
    u32 tid;
    char comm[TASK_COMM_LEN];
};
GG_SHARED_SK_STORAGE(sock_owners, struct sock_owner);

static __always_inline void own_socket(struct bpf_sock *sk)
{
    if (!sk)
        return;
    struct sock_owner *o = sock_owners.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!o)
        return;
    u64 pt = bpf_get_current_pid_tgid();
    o->tgid = pt >> 32;
    o->tid = (u32)pt;
    bpf_get_current_comm(&o->comm, sizeof(o->comm));
}

/* The packet's sender into h (tid, tgid, comm); 1 when that sender is the current task. */
static __always_inline int packet_sender(struct __sk_buff *skb, struct event_header *h)
{
    u64 pt = bpf_get_current_pid_tgid();
    struct bpf_sock *sk = skb->sk;
    if (sk)
        sk = bpf_sk_fullsock(sk);
    struct sock_owner *o = sk ? sock_owners.sk_storage_get(sk, 0, 0) : 0;
    if (o) {
        h->tgid = o->tgid;
        h->tid = o->tid;
        __builtin_memcpy(h->comm, o->comm, TASK_COMM_LEN);
        return o->tgid == (u32)(pt >> 32);
    }
    if (bpf_get_current_cgroup_id() == bpf_skb_cgroup_id(skb)) {
        h->tid = (u32)pt;
        h->tgid = pt >> 32;
        bpf_get_current_comm(&h->comm, TASK_COMM_LEN);
        return 1;
    }
    no_process(h);
    return 0;
}

/* The tgid of the current task's parent when it connected out of the node and holds the master of the pty on
 * the task's stdio (a pty reverse shell), else 0. */
static __always_inline u32 stdio_pty_peer(void)
{
    u64 slave = stdio_pty_slave();
    if (!slave)
        return 0;
    void *task = (void *)bpf_get_current_task();
    void *parent = (void *)kread_u64(task, OFF_TASK_REAL_PARENT);
    u32 ptgid = parent ? kread_u32(parent, OFF_TASK_TGID) : 0;
    if (!ptgid || !net_tgids.lookup(&ptgid))
        return 0;
    return holds_master_of(parent, slave) ? ptgid : 0;
}

/* ---- egress by DNS name, no proxy: flow.c learns (scope, address) from DNS answers for allowed names that a
 * trusted resolver sent to a job in a name-policy scope, before the answer is queued to the socket;
 * enforce_connect.c lets a connect/sendmsg in that scope through to such an address until the entry expires.
 * Names are matched by a keyed hash of each suffix at a label boundary (the key is random per agent, so a
 * job cannot forge a name that hashes like an allowed one). */
struct name_key {
    u64 scope;
    u64 hash;
};

struct name_addr_key {
    u64 scope;
    u8 addr[16];                   /* v4 as v4-mapped */
};

struct resolver_key {
    u8 addr[16];
};

GG_SHARED_TABLE("hash", u64, u32, name_scopes, 1024);                              /* scope -> rule index */
GG_SHARED_TABLE("hash", struct name_key, u32, allowed_names, 8192);                 /* (scope, suffix hash) -> 1 */
GG_SHARED_TABLE("hash", struct resolver_key, u32, trusted_resolvers, 64);
GG_SHARED_TABLE("lru_hash", struct name_addr_key, u64, name_addrs, 65536);  /* -> expiry, boot ns */
GG_SHARED_TABLE("array", int, u64, name_hash_key, 1);

/* ---- exec traits: what the new image is, judged by property (exec.c records them, enforce_exec.c
 * kills on them). Read at sched_process_exec, where the new image, its argv and its environment exist. */
BPF_PERCPU_ARRAY(env_scratch, struct env_buf, 1);

#define MAX_ENV_VARS 256                    /* environment entries looked at; beyond: TRAIT_ENV_UNSCANNED */
#define ENV_LD_TRACE (1U << 16)             /* internal: LD_TRACE_LOADED_OBJECTS (ldd: the loader runs nothing) */
#define SLURM_W0 STR8('S', 'L', 'U', 'R', 'M', '_', 'J', 'O')
#define SLURM_W1 STR8('B', '_', 'I', 'D', '=', 0, 0, 0)
#define SLURM_W1_MASK 0xFFFFFFFFFFULL
#define SLURM_PREFIX_LEN 13
#define LDP_W0 STR8('L', 'D', '_', 'P', 'R', 'E', 'L', 'O')
#define LDP_W1 STR8('A', 'D', '=', 0, 0, 0, 0, 0)
#define LDA_W0 STR8('L', 'D', '_', 'A', 'U', 'D', 'I', 'T')
#define LDT_W0 STR8('L', 'D', '_', 'T', 'R', 'A', 'C', 'E')
#define MASK3 0xFFFFFFULL
#define MASK5 0xFFFFFFFFFFULL
#define MASK6 0xFFFFFFFFFFFFULL

/* LD_PRELOAD's first entry (at s[11]) is relative, or under /tmp, /var/tmp, /dev/shm or /proc (a memfd). */
static __always_inline int preload_from_staging(const char *s)
{
    if (s[11] == 0)
        return 0;
    if (s[11] != '/')
        return 1;
    u64 w = 0, w2 = 0;
    __builtin_memcpy(&w, &s[11], 8);
    __builtin_memcpy(&w2, &s[19], 8);
    return (w & MASK5) == STR8('/', 't', 'm', 'p', '/', 0, 0, 0) ||
           (w & MASK6) == STR8('/', 'p', 'r', 'o', 'c', '/', 0, 0) ||
           (w == STR8('/', 'v', 'a', 'r', '/', 't', 'm', 'p') && (w2 & 0xff) == '/') ||
           (w == STR8('/', 'd', 'e', 'v', '/', 's', 'h', 'm') && (w2 & 0xff) == '/');
}

/* Variables that make an interpreter load code before its own (PYTHONSTARTUP, PYTHONPATH, PYTHONHOME, BASH_ENV,
 * ENV, PERL5LIB, PERL5OPT, RUBYLIB, RUBYOPT, NODE_OPTIONS, NODE_PATH, JAVA_TOOL_OPTIONS, _JAVA_OPTIONS), by the
 * first 16 bytes of "NAME=value". */
static __always_inline int is_hook_var(u64 w0, u64 w1)
{
    if (w0 == STR8('P', 'Y', 'T', 'H', 'O', 'N', 'S', 'T'))
        return (w1 & MASK6) == STR8('A', 'R', 'T', 'U', 'P', '=', 0, 0);
    if (w0 == STR8('P', 'Y', 'T', 'H', 'O', 'N', 'P', 'A'))
        return (w1 & MASK3) == STR8('T', 'H', '=', 0, 0, 0, 0, 0);
    if (w0 == STR8('P', 'Y', 'T', 'H', 'O', 'N', 'H', 'O'))
        return (w1 & MASK3) == STR8('M', 'E', '=', 0, 0, 0, 0, 0);
    if (w0 == STR8('B', 'A', 'S', 'H', '_', 'E', 'N', 'V') || w0 == STR8('P', 'E', 'R', 'L', '5', 'L', 'I', 'B') ||
        w0 == STR8('P', 'E', 'R', 'L', '5', 'O', 'P', 'T'))
        return (w1 & 0xff) == '=';
    if (w0 == STR8('N', 'O', 'D', 'E', '_', 'O', 'P', 'T'))
        return (w1 & MASK5) == STR8('I', 'O', 'N', 'S', '=', 0, 0, 0);
    if (w0 == STR8('N', 'O', 'D', 'E', '_', 'P', 'A', 'T'))
        return (w1 & 0xffff) == STR8('H', '=', 0, 0, 0, 0, 0, 0);
    if (w0 == STR8('J', 'A', 'V', 'A', '_', 'T', 'O', 'O'))
        return w1 == STR8('L', '_', 'O', 'P', 'T', 'I', 'O', 'N');
    if (w0 == STR8('_', 'J', 'A', 'V', 'A', '_', 'O', 'P'))
        return (w1 & MASK6) == STR8('T', 'I', 'O', 'N', 'S', '=', 0, 0);
    return w0 == STR8('R', 'U', 'B', 'Y', 'L', 'I', 'B', '=') || w0 == STR8('R', 'U', 'B', 'Y', 'O', 'P', 'T', '=') ||
           (w0 & 0xFFFFFFFFULL) == STR8('E', 'N', 'V', '=', 0, 0, 0, 0);
}

/* Whether the start-up variable at p names a path under /dev/shm/ or a hidden directory directly under /tmp or
 * /var/tmp (/tmp/.x) as one of its entries: at the value's start, after a ':' (a path list, -javaagent:), a space
 * or an '=' (NODE_OPTIONS="--require /dev/shm/x.js", --require=). Searched over the first HOOK_VALUE_SCAN bytes. */
static __always_inline int hook_names_staging(struct env_buf *b, u64 p)
{
    long n = bpf_probe_read_user_str(b->s, HOOK_VALUE_SCAN + 16, (void *)p);
    for (int i = 1; i < HOOK_VALUE_SCAN; i++) {
        if (i >= n - 1)
            break;
        char before = b->s[i - 1];
        if (before != '=' && before != ':' && before != ' ')
            continue;
        u64 w = 0;
        __builtin_memcpy(&w, &b->s[i], 8);
        char c8 = b->s[i + 8], c9 = b->s[i + 9];
        if ((w == STR8('/', 'd', 'e', 'v', '/', 's', 'h', 'm') && c8 == '/') ||
            (w & MASK6) == STR8('/', 't', 'm', 'p', '/', '.', 0, 0) ||
            (w == STR8('/', 'v', 'a', 'r', '/', 't', 'm', 'p') && c8 == '/' && c9 == '.'))
            return 1;
    }
    return 0;
}

/* One pass over the environment: SLURM_JOB_ID (into job_env when given), the LD_* traits and where the
 * interpreter start-up variables are (searched after the pass: TRAIT_HOOK_ENV_STAGING). A variable longer than
 * the buffer is stepped over in pieces, so padding cannot hide what follows it. */
static __always_inline u32 scan_env(u64 p, u64 end, char *job_env)
{
    u32 zero = 0;
    struct env_buf *b = env_scratch.lookup(&zero);
    if (!b)
        return 0;
    b->traits = 0;
    b->nhooks = 0;
    int i = 0;
    for (; i < MAX_ENV_VARS; i++) {
        if (p >= end)
            break;
        long n = bpf_probe_read_user_str(b->s, sizeof(b->s), (void *)p);
        if (n <= 0)
            break;
        u64 w0 = *(u64 *)&b->s[0];
        u64 w1 = *(u64 *)&b->s[8];
        if (w0 == SLURM_W0 && (w1 & SLURM_W1_MASK) == SLURM_W1) {
            if (job_env && !job_env[0])
                bpf_probe_read_user_str(job_env, JOB_ENV_LEN, (void *)(p + SLURM_PREFIX_LEN));
        } else if (w0 == LDP_W0 && (w1 & MASK3) == LDP_W1) {
            b->traits |= preload_from_staging(b->s) ? TRAIT_LD_PRELOAD | TRAIT_PRELOAD_STAGING : TRAIT_LD_PRELOAD;
        } else if (w0 == LDA_W0 && (w1 & 0xff) == '=') {
            b->traits |= TRAIT_LD_AUDIT;
        } else if (w0 == LDT_W0) {
            b->traits |= ENV_LD_TRACE;
        } else if (b->nhooks < MAX_HOOK_VARS && is_hook_var(w0, w1)) {
            b->hooks[b->nhooks & (MAX_HOOK_VARS - 1)] = p;
            b->nhooks++;
        }
        p += n >= (long)sizeof(b->s) ? n - 1 : n;
    }
    if (i >= MAX_ENV_VARS && p < end)
        b->traits |= TRAIT_ENV_UNSCANNED;
    for (int h = 0; h < MAX_HOOK_VARS; h++) {
        if (h >= b->nhooks)
            break;
        if (hook_names_staging(b, b->hooks[h])) {
            b->traits |= TRAIT_HOOK_ENV_STAGING;
            break;
        }
    }
    return b->traits;
}

/* The dynamic loader's own file names: ld-linux*.so*, ld-musl-*, ld64.so.*, ld.so*. */
static __always_inline int is_loader_name(u64 w)
{
    return w == STR8('l', 'd', '-', 'l', 'i', 'n', 'u', 'x') || w == STR8('l', 'd', '-', 'm', 'u', 's', 'l', '-') ||
           w == STR8('l', 'd', '6', '4', '.', 's', 'o', '.') ||
           ((w & MASK5) == STR8('l', 'd', '.', 's', 'o', 0, 0, 0) && ((w >> 40) & 0xff) != '-' &&
            (((w >> 40) & 0xff) == 0 || ((w >> 40) & 0xff) == '.'));
}

/* The loader runs a program unless asked only to list or verify (ldd: --verify, --list, LD_TRACE_*). */
static __always_inline int loader_runs_program(u64 arg_start, u64 arg_end)
{
    u32 zero = 0;
    struct env_buf *b = env_scratch.lookup(&zero);
    if (!b)
        return 1;
    long n = bpf_probe_read_user_str(b->s, 256, (void *)arg_start);    /* argv[0] */
    if (n <= 0 || n >= 256 || arg_start + n >= arg_end)
        return n > 0 && n < 256 ? 0 : 1;      /* no argv[1]: it prints its usage */
    u64 w = 0;
    bpf_probe_read_user(&w, 8, (void *)(arg_start + n));
    return !(w == STR8('-', '-', 'v', 'e', 'r', 'i', 'f', 'y') || (w & MASK6) == STR8('-', '-', 'l', 'i', 's', 't', 0, 0) ||
             (w & MASK6) == STR8('-', '-', 'h', 'e', 'l', 'p', 0, 0) || w == STR8('-', '-', 'v', 'e', 'r', 's', 'i', 'o'));
}

/* A program's file and inode (mm->exe_file): what the identity checks (enforce_connect.c, enforce_payload.c) and the
 * no-link trait read. 0 where a step is missing (a kernel thread has no mm). */
static __always_inline void *mm_exe_file(void *mm)
{
    return mm ? (void *)kread_u64(mm, OFF_MM_EXE_FILE) : 0;
}

static __always_inline void *file_inode_of(void *file)
{
    return file ? (void *)kread_u64(file, OFF_FILE_INODE) : 0;
}

static __always_inline void *current_exe_inode(void)
{
    void *task = (void *)bpf_get_current_task();
    return file_inode_of(mm_exe_file((void *)kread_u64(task, OFF_TASK_MM)));
}

/* An inode as (device, inode): what the exec record, the connect identity and the payload exemptions compare,
 * never a path. */
static __always_inline void inode_identity(void *inode, u32 *dev, u64 *ino)
{
    if (!inode)
        return;
    *ino = kread_u64(inode, OFF_INODE_INO);
    void *sb = (void *)kread_u64(inode, OFF_INODE_SB);
    *dev = sb ? kread_u32(sb, OFF_SB_DEV) : 0;
}

static __always_inline void current_exe(u32 *dev, u64 *ino)
{
    inode_identity(current_exe_inode(), dev, ino);
}

/* An inode's change time in ns (0 where this kernel's layout is not known). Linux 6.11+ keeps seconds and ns
 * apart (6.13+ flags "queried" in the ns field's top bit: masked); 6.6-6.10 and older kernels a timespec64. */
static __always_inline u64 inode_ctime_ns(void *inode)
{
    if (!inode)
        return 0;
#if OFF_INODE_CTIME_SEC >= 0
    return kread_u64(inode, OFF_INODE_CTIME_SEC) * 1000000000ULL +
           (kread_u32(inode, OFF_INODE_CTIME_NSEC) & 0x3fffffff);
#elif OFF_INODE_CTIME_TS >= 0
    return kread_u64(inode, OFF_INODE_CTIME_TS) * 1000000000ULL + kread_u64(inode, OFF_INODE_CTIME_TS + 8);
#else
    return 0;
#endif
}

/* No link on disk: a memfd, an O_TMPFILE, or a file deleted since it was opened. */
static __always_inline int inode_nolink(void *inode)
{
    return inode && kread_u32(inode, OFF_INODE_NLINK) == 0;
}

/* The current task's image, now: a program that deletes its own binary after it starts (common to miners and
 * droppers) carries no trait at exec, but its later connects do. */
static __always_inline int current_image_nolink(void)
{
    return inode_nolink(current_exe_inode());
}

/* TRAIT_* bits of the current task's new image. job_env (JOB_ENV_LEN bytes, or 0) receives SLURM_JOB_ID;
 * image (or 0) the image's inode, read here once for the exec record too. */
static __always_inline u32 exec_traits(char *job_env, void **image)
{
    void *task = (void *)bpf_get_current_task();
    void *mm = (void *)kread_u64(task, OFF_TASK_MM);
    if (!mm)
        return 0;
    u32 traits = 0;
    void *file = mm_exe_file(mm);
    void *inode = file_inode_of(file);
    if (image)
        *image = inode;
    if (inode_nolink(inode))
        traits |= TRAIT_IMAGE_NOLINK;
    void *dentry = file ? (void *)kread_u64(file, OFF_FILE_PATH + OFF_PATH_DENTRY) : 0;
    void *name = dentry ? (void *)kread_u64(dentry, OFF_DENTRY_NAME + OFF_QSTR_NAME) : 0;
    u64 w = name ? kread_array_u64(name, 0) : 0;    /* the first 8 bytes of the file's name */
    traits |= scan_env(kread_u64(mm, OFF_MM_ENV_START), kread_u64(mm, OFF_MM_ENV_END), job_env);
    if (is_loader_name(w) && !(traits & ENV_LD_TRACE) &&
        loader_runs_program(kread_u64(mm, OFF_MM_ARG_START), kread_u64(mm, OFF_MM_ARG_END)))
        traits |= TRAIT_VIA_LOADER;
    return traits & ~ENV_LD_TRACE;
}

#endif
