/* A fake libnvidia-ml.so.1 for tests and demos without a GPU: the real nvidia-ml-py (pynvml) loads it and gets
 * the GPUs and GPU processes described in the file named by $GPUGUARD_FAKE_NVML, re-read at every call so a test
 * can change what "the GPU" shows. Lines:
 *     gpu INDEX UUID UTIL_PERCENT POWER_MILLIWATTS
 *     proc INDEX PID USED_MEMORY_BYTES SM_UTIL_PERCENT
 * No file: nvmlInit fails with NVML_ERROR_DRIVER_NOT_LOADED (a node without a GPU driver).
 * Built by the tests: cc -shared -fPIC -Wl,-soname,libnvidia-ml.so.1 -o libnvidia-ml.so.1 nvml.c */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NVML_SUCCESS 0
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define MAX_GPUS 8
#define MAX_PROCS 64

struct gpu { int present; char uuid[96]; unsigned util, power; };
struct proc { unsigned gpu, pid, sm; unsigned long long mem; };
struct process_info { unsigned pid; unsigned long long used; unsigned gi, ci; };            /* _v2 / _v3 */
struct util_sample { unsigned pid; unsigned long long ts; unsigned sm, mem, enc, dec; };
struct utilization { unsigned gpu, memory; };

static struct gpu gpus[MAX_GPUS];
static struct proc procs[MAX_PROCS];
static unsigned ngpus, nprocs;

static int load(void)
{
    const char *path = getenv("GPUGUARD_FAKE_NVML");
    FILE *f = path ? fopen(path, "r") : NULL;
    if (!f)
        return NVML_ERROR_DRIVER_NOT_LOADED;
    memset(gpus, 0, sizeof(gpus));
    ngpus = nprocs = 0;
    char line[256];
    while (fgets(line, sizeof(line), f)) {
        unsigned idx, a, b;
        unsigned long long mem;
        char uuid[96];
        if (sscanf(line, "gpu %u %95s %u %u", &idx, uuid, &a, &b) == 4 && idx < MAX_GPUS) {
            gpus[idx].present = 1;
            strcpy(gpus[idx].uuid, uuid);
            gpus[idx].util = a;
            gpus[idx].power = b;
            if (idx + 1 > ngpus)
                ngpus = idx + 1;
        } else if (sscanf(line, "proc %u %u %llu %u", &idx, &a, &mem, &b) == 4 && nprocs < MAX_PROCS) {
            procs[nprocs++] = (struct proc){idx, a, b, mem};
        }
    }
    fclose(f);
    return NVML_SUCCESS;
}

static int gpu_of(void *handle, unsigned *idx)
{
    *idx = (unsigned)(unsigned long)handle - 1;
    return load() == NVML_SUCCESS && *idx < ngpus && gpus[*idx].present ? NVML_SUCCESS : NVML_ERROR_NOT_FOUND;
}

int nvmlInitWithFlags(unsigned flags) { (void)flags; return load(); }
int nvmlInit_v2(void) { return load(); }
int nvmlShutdown(void) { return NVML_SUCCESS; }

const char *nvmlErrorString(int result)
{
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    default: return "Unknown Error";
    }
}

int nvmlDeviceGetCount_v2(unsigned *count)
{
    int rc = load();
    *count = ngpus;
    return rc;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned index, void **handle)
{
    if (load() != NVML_SUCCESS || index >= ngpus)
        return NVML_ERROR_INVALID_ARGUMENT;
    *handle = (void *)(unsigned long)(index + 1);
    return NVML_SUCCESS;
}

int nvmlDeviceGetUUID(void *handle, char *uuid, unsigned length)
{
    unsigned idx;
    if (gpu_of(handle, &idx) != NVML_SUCCESS || !length)
        return NVML_ERROR_NOT_FOUND;
    snprintf(uuid, length, "%s", gpus[idx].uuid);
    return NVML_SUCCESS;
}

int nvmlDeviceGetUtilizationRates(void *handle, struct utilization *u)
{
    unsigned idx;
    if (gpu_of(handle, &idx) != NVML_SUCCESS)
        return NVML_ERROR_NOT_FOUND;
    u->gpu = gpus[idx].util;
    u->memory = gpus[idx].util / 2;
    return NVML_SUCCESS;
}

int nvmlDeviceGetPowerUsage(void *handle, unsigned *mw)
{
    unsigned idx;
    if (gpu_of(handle, &idx) != NVML_SUCCESS)
        return NVML_ERROR_NOT_FOUND;
    *mw = gpus[idx].power;
    return NVML_SUCCESS;
}

static unsigned procs_on(unsigned idx)
{
    unsigned n = 0;
    for (unsigned i = 0; i < nprocs; i++)
        n += procs[i].gpu == idx;
    return n;
}

int nvmlDeviceGetComputeRunningProcesses_v3(void *handle, unsigned *count, struct process_info *infos)
{
    unsigned idx;
    if (gpu_of(handle, &idx) != NVML_SUCCESS)
        return NVML_ERROR_NOT_FOUND;
    unsigned n = procs_on(idx);
    if (!infos || *count < n) {
        *count = n;
        return n ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
    }
    unsigned k = 0;
    for (unsigned i = 0; i < nprocs; i++)
        if (procs[i].gpu == idx)
            infos[k++] = (struct process_info){procs[i].pid, procs[i].mem, 0xFFFFFFFF, 0xFFFFFFFF};
    *count = k;
    return NVML_SUCCESS;
}

int nvmlDeviceGetProcessUtilization(void *handle, struct util_sample *samples, unsigned *count,
                                    unsigned long long last_seen)
{
    unsigned idx;
    (void)last_seen;
    if (gpu_of(handle, &idx) != NVML_SUCCESS)
        return NVML_ERROR_NOT_FOUND;
    unsigned n = procs_on(idx);
    if (!samples || *count < n) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    unsigned k = 0;
    for (unsigned i = 0; i < nprocs; i++)
        if (procs[i].gpu == idx)
            samples[k++] = (struct util_sample){procs[i].pid, 1, procs[i].sm, procs[i].sm / 2, 0, 0};
    *count = k;
    return NVML_SUCCESS;
}
