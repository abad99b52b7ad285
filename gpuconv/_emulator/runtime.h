// runtime.h -- the emulator's launch runtime, included once by module.cpp after the kernels.
//
// One launch: blocks are handed out from an atomic counter to a pool of OS worker threads (the
// calling thread is one of them). A worker runs one block at a time: every CUDA thread of the
// block is a user-level fiber with its own stack, and a scheduler that switches ONLY at
// __syncthreads() and warp collectives (see resolve_warps): it runs fiber 0 until it reaches
// the barrier or returns, then fiber 1, ...
// When every live fiber waits at the barrier the round ends and all are released. If at the end
// of a round some fibers have returned while others wait, the barrier is divergent: the block is
// abandoned and the launch fails with a message (never a hang).
//
// Checked mode (used by the _worker.py subprocess) copies each array argument into an mmap'd
// buffer bordered by PROT_NONE guard pages and turns SIGSEGV into a report of which parameter was
// accessed at which byte offset, by which thread.
#ifndef GPUCONV_EMU_RUNTIME_H
#define GPUCONV_EMU_RUNTIME_H

#include <dlfcn.h>
#include <link.h>
#include <signal.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>


#define GPUCONV_EMU_API extern "C" __attribute__((visibility("default")))

namespace gpuconv_emu {
thread_local ThreadState tls;
}  // namespace gpuconv_emu

#ifdef GPUCONV_EMU_TRACK
#include "track.h"  // the track build: per-access hooks (race_check's cross-block check, counters)
#endif

namespace gpuconv_emu {

struct Entry {
    const char* name;
    void (*fn)();
    void (*invoke)(void (*)(), void**);
    int nargs;
    std::string signature;   // comma-separated type codes
    std::string alignments;  // comma-separated alignof of pointees (0: scalar)
};
const std::vector<Entry>& entries();  // defined by module.cpp from entries.inc

// launch flags (mirrored in _abi.py)
enum : unsigned {
    FLAG_ORDER_REVERSE = 1u << 0,  // run threads (and blocks) in reverse order
    FLAG_ORDER_SHUFFLE = 1u << 1,  // ... in a shuffled order (seeded)
    FLAG_SERIAL = 1u << 2,         // one worker thread, blocks in (permuted) order
    FLAG_FILL_SHARED = 1u << 3,    // fill shared memory with 0xFF bytes before each block
    FLAG_CHECKED = 1u << 4,        // guard pages + SIGSEGV reports (subprocess only)
    FLAG_GUARD_HEAD = 1u << 5,     // checked: buffers start right after a guard page
    FLAG_WARP_SERIAL = 1u << 6,    // one warp at a time runs its whole barrier interval
    // bits 8..15: the byte FLAG_FILL_SHARED writes (0 means 0xFF)
};
static unsigned char fill_byte(unsigned flags) {
    const unsigned b = (flags >> 8) & 0xffu;
    return static_cast<unsigned char>(b ? b : 0xffu);
}

// launch return codes (mirrored in _abi.py)
enum : int {
    RC_OK = 0,
    RC_INVALID = 1,
    RC_DIVERGENT_BARRIER = 2,
    RC_KERNEL_FAULT = 3,
    RC_INTERNAL = 4,
    RC_CANCELLED = 5,  // *cancel became nonzero (the caller's Ctrl-C): stopped between threads
    RC_RACE = 6,       // track build: a lost update or cross-block read/write (track.h)
};

enum FiberState : int {
    FIBER_READY = 0,
    FIBER_AT_BARRIER = 1,
    FIBER_DONE = 2,
    FIBER_FAULTED = 3,
    FIBER_AT_WARP = 4,  // parked at a warp collective (see warp_collective)
};

// ---------------------------------------------------------------------------------------------
// Context switch
// ---------------------------------------------------------------------------------------------
#ifndef GPUCONV_EMU_UCONTEXT
// void gpuconv_emu_swap(void** save_sp, void* load_sp): pushes the callee-saved registers on the
// current stack, stores the stack pointer in *save_sp, switches to load_sp and pops them there.
// MXCSR and the x87 control word are not switched: every fiber of an OS thread shares them
// (CUDA code cannot change rounding modes).
extern "C" void gpuconv_emu_swap(void** save_sp, void* load_sp);
asm(R"(
    .text
    .p2align 4
    .globl gpuconv_emu_swap
    .hidden gpuconv_emu_swap
    .type gpuconv_emu_swap,@function
gpuconv_emu_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size gpuconv_emu_swap,.-gpuconv_emu_swap
)");
static const char* const kFiberImpl = "x86_64-asm";
#else
static const char* const kFiberImpl = "ucontext";
#endif

struct Worker;
static void fiber_main();

// ---------------------------------------------------------------------------------------------
// Fiber stacks: regions of kStackBytes aligned to kStackBytes, guard pages at the bottom, the
// Fiber header at the top; pooled for the life of the process
// ---------------------------------------------------------------------------------------------
static std::size_t page_size() {
    static const std::size_t p = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    return p;
}
static std::size_t round_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }
// guard pages at the bottom of each stack region: 1/8 of it, at most 16 KiB
static const std::size_t kStackGuardBytes = kStackBytes / 8 < 16384 ? kStackBytes / 8 : 16384;

static char* region_base(const Fiber* f) {
    return reinterpret_cast<char*>(reinterpret_cast<std::uintptr_t>(f) & ~(kStackBytes - 1));
}
static Fiber* region_fiber(char* base) {
    return fiber_of_region(reinterpret_cast<std::uintptr_t>(base));
}

struct StackPool {
    std::mutex mutex;
    std::vector<char*> free_regions;
};
static StackPool& stack_pool() {
    static StackPool* pool = new StackPool;  // never destroyed: stacks outlive static teardown
    return *pool;
}

static char* new_region() {
    // map twice the size, keep the aligned half
    void* p = mmap(nullptr, 2 * kStackBytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    const std::uintptr_t raw = reinterpret_cast<std::uintptr_t>(p);
    const std::uintptr_t base = (raw + kStackBytes - 1) & ~(kStackBytes - 1);
    if (base > raw) munmap(p, base - raw);
    const std::uintptr_t tail = raw + 2 * kStackBytes - (base + kStackBytes);
    if (tail) munmap(reinterpret_cast<void*>(base + kStackBytes), tail);
    char* region = reinterpret_cast<char*>(base);
    if (mprotect(region, round_up(kStackGuardBytes, page_size()), PROT_NONE) != 0) return nullptr;
    return region;
}

static bool acquire_stacks(std::vector<Fiber*>& fibers, std::size_t n) {
    StackPool& pool = stack_pool();
    std::lock_guard<std::mutex> lock(pool.mutex);
    while (fibers.size() < n) {
        char* region;
        if (!pool.free_regions.empty()) {
            region = pool.free_regions.back();
            pool.free_regions.pop_back();
        } else if (!(region = new_region())) {
            return false;
        }
        fibers.push_back(region_fiber(region));
    }
    return true;
}

static void release_stacks(std::vector<Fiber*>& fibers) {
    StackPool& pool = stack_pool();
    std::lock_guard<std::mutex> lock(pool.mutex);
    for (Fiber* f : fibers) pool.free_regions.push_back(region_base(f));
    fibers.clear();
}

// ---------------------------------------------------------------------------------------------
// Guarded buffers and the SIGSEGV report (checked mode)
// ---------------------------------------------------------------------------------------------
struct Region {
    char* map_lo;
    char* map_hi;
    char* data;
    std::size_t nbytes;
    int param;  // parameter index, or -1 for dynamic shared memory
};
static const int kMaxRegions = 8192;
static Region g_regions[kMaxRegions];
static std::atomic<int> g_region_count{0};
static std::atomic<int> g_report_fd{2};
static std::atomic<int> g_fault_reported{0};
static const std::size_t kBufferGuardBytes = 64 * 1024;

static char* alloc_guarded(std::size_t nbytes, bool head, std::size_t align, int param) {
    const std::size_t page = page_size();
    const std::size_t guard = round_up(kBufferGuardBytes, page);
    const std::size_t data_pages = round_up(nbytes ? nbytes : 1, page);
    const std::size_t total = guard + data_pages + guard;
    void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    char* map = static_cast<char*>(p);
    if (mprotect(map, guard, PROT_NONE) != 0 ||
        mprotect(map + guard + data_pages, guard, PROT_NONE) != 0) {
        munmap(map, total);
        return nullptr;
    }
    char* data = head ? map + guard : map + guard + data_pages - round_up(nbytes, align);
    const int slot = g_region_count.fetch_add(1);
    if (slot >= kMaxRegions) {
        munmap(map, total);
        return nullptr;
    }
    g_regions[slot] = Region{map, map + total, data, nbytes, param};
    return data;
}

static void free_guarded_all() {
    const int n = std::min(g_region_count.load(), kMaxRegions);
    for (int i = 0; i < n; ++i) munmap(g_regions[i].map_lo, g_regions[i].map_hi - g_regions[i].map_lo);
    g_region_count.store(0);
}

static void segv_handler(int sig, siginfo_t* info, void* context) {
    if (g_fault_reported.exchange(1)) {  // another thread is already reporting
        for (;;) pause();
    }
    char* addr = static_cast<char*>(info->si_addr);
    const char* access = "access";
#if defined(__x86_64__)
    const ucontext_t* uc = static_cast<const ucontext_t*>(context);
    access = (uc->uc_mcontext.gregs[REG_ERR] & 2) ? "write" : "read";
#else
    (void)context;
#endif
    char msg[1024];
    int len = 0;
    const Fiber* cur = tls.current;
    const uint3 t = cur ? cur->thread_idx : uint3{0, 0, 0};
    const uint3 b = cur ? cur->block_idx : uint3{0, 0, 0};
    const int in_kernel = cur != nullptr;
    const int n = std::min(g_region_count.load(), kMaxRegions);
    int found = -1;
    for (int i = 0; i < n; ++i)
        if (addr >= g_regions[i].map_lo && addr < g_regions[i].map_hi) found = i;
    if (found >= 0) {
        const Region& r = g_regions[found];
        len = snprintf(msg, sizeof msg,
                       "kind=oob param=%d offset=%lld nbytes=%llu access=%s thread=%u,%u,%u "
                       "block=%u,%u,%u in_kernel=%d\n",
                       r.param, static_cast<long long>(addr - r.data),
                       static_cast<unsigned long long>(r.nbytes), access, t.x, t.y, t.z, b.x, b.y,
                       b.z, in_kernel);
    } else if (cur && addr < region_base(cur) + kStackGuardBytes &&
               addr + (1 << 20) >= region_base(cur)) {
        len = snprintf(msg, sizeof msg,
                       "kind=stack stack_kib=%llu thread=%u,%u,%u block=%u,%u,%u in_kernel=1\n",
                       static_cast<unsigned long long>((kStackBytes - kStackGuardBytes) / 1024), t.x, t.y, t.z, b.x,
                       b.y, b.z);
    } else {
        len = snprintf(msg, sizeof msg,
                       "kind=segv signal=%d address=%p access=%s thread=%u,%u,%u block=%u,%u,%u "
                       "in_kernel=%d\n",
                       sig, static_cast<void*>(addr), access, t.x, t.y, t.z, b.x, b.y, b.z,
                       in_kernel);
    }
    if (len > 0) {
        const ssize_t unused = write(g_report_fd.load(), msg, static_cast<std::size_t>(len));
        (void)unused;
    }
    _exit(77);
}

static void install_segv_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = segv_handler;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, nullptr);
        sigaction(SIGBUS, &sa, nullptr);
    });
}

// ---------------------------------------------------------------------------------------------
// One launch
// ---------------------------------------------------------------------------------------------
struct Launch {
    const Entry* entry;
    void** argv;
    dim3 grid, block;
    std::size_t shared_bytes;
    unsigned flags;
    unsigned long long seed;
    unsigned long long nblocks;
    unsigned nthreads;  // per block
    std::vector<unsigned long long> block_order;  // empty: identity
    std::atomic<unsigned long long> next_block{0};
    std::atomic<bool> failed{false};
    std::mutex error_mutex;
    int rc = RC_OK;
    std::string error;
    std::atomic<unsigned long long> barriers{0}, switches{0}, float_atomics{0}, blocks_run{0};
    const int* cancel = nullptr;  // set by the caller (another thread) to stop the launch
    void* tracker = nullptr;      // track build: the launch's Tracker (serial launches only)

    bool cancelled() const { return cancel && __atomic_load_n(cancel, __ATOMIC_RELAXED) != 0; }

    void fail(int code, const std::string& message) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (rc == RC_OK) {
            rc = code;
            error = message;
        }
        failed.store(true);
    }
};

struct Worker {
    Launch* launch;
    std::vector<Fiber*> regions;   // all stack regions this worker holds
    std::vector<Fiber*> free_list; // regions not used by a live thread of the current block
    std::vector<Fiber*> slot;      // thread -> its region while it is alive, else nullptr
    std::vector<unsigned> order;
    uint3 block_idx;
    unsigned char* dynamic_shared = nullptr;
    unsigned char* shared_alloc = nullptr;
    unsigned char* tls_lo = nullptr;  // this module's thread-local block (static __shared__)
    std::size_t tls_size = 0;
    unsigned long long barriers = 0, switches = 0, float_atomics = 0, warp_collectives = 0;
    int barrier_predicate_sum = 0;
    void* scheduler_sp = nullptr;
    void* altstack = nullptr;
#ifdef GPUCONV_EMU_UCONTEXT
    ucontext_t scheduler_ctx;
#endif
};

static unsigned long long splitmix64(unsigned long long& state) {
    unsigned long long z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static std::string fmt_uint3(uint3 v) {
    return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}

// Find this module's PT_TLS block for the calling thread (the static __shared__ arrays live there).
struct TlsLookup {
    uintptr_t base;
    unsigned char* data;
    std::size_t size;
};
static int tls_phdr_callback(dl_phdr_info* info, std::size_t, void* arg) {
    TlsLookup* q = static_cast<TlsLookup*>(arg);
    if (info->dlpi_addr != q->base) return 0;
    for (int i = 0; i < info->dlpi_phnum; ++i)
        if (info->dlpi_phdr[i].p_type == PT_TLS) {
            q->data = static_cast<unsigned char*>(info->dlpi_tls_data);
            q->size = info->dlpi_phdr[i].p_memsz;
        }
    return 1;
}
static void find_tls_block(Worker& w) {
    Dl_info di;
    if (!dladdr(reinterpret_cast<void*>(&find_tls_block), &di)) return;
    TlsLookup q{reinterpret_cast<uintptr_t>(di.dli_fbase), nullptr, 0};
    dl_iterate_phdr(tls_phdr_callback, &q);
    unsigned char* self = reinterpret_cast<unsigned char*>(&tls);
    if (q.data && self >= q.data && self + sizeof(ThreadState) <= q.data + q.size) {
        w.tls_lo = q.data;
        w.tls_size = q.size;
    }
}

static void fill_shared_garbage(Worker& w) {
    const unsigned char byte = fill_byte(w.launch->flags);
    if (w.tls_lo) {  // everything thread-local in this module except the runtime's own state
        unsigned char* self = reinterpret_cast<unsigned char*>(&tls);
        memset(w.tls_lo, byte, static_cast<std::size_t>(self - w.tls_lo));
        memset(self + sizeof(ThreadState), byte,
               static_cast<std::size_t>(w.tls_lo + w.tls_size - (self + sizeof(ThreadState))));
    }
    if (w.launch->shared_bytes) memset(w.dynamic_shared, byte, w.launch->shared_bytes);
}

static void init_fiber_context(Fiber& f) {
#ifndef GPUCONV_EMU_UCONTEXT
    // the stack top is the Fiber header (64-byte aligned); below it a frame that
    // gpuconv_emu_swap "returns" through into fiber_main with a 16-byte aligned call frame
    unsigned long long* top = reinterpret_cast<unsigned long long*>(&f);
    top[-1] = 0;                                                    // fake return address
    top[-2] = reinterpret_cast<unsigned long long>(&fiber_main);  // popped by `ret`
    for (int i = 3; i <= 8; ++i) top[-i] = 0;                       // rbp rbx r12-r15
    f.sp = &top[-8];
#else
    getcontext(&f.ctx);
    char* base = region_base(&f);
    f.ctx.uc_stack.ss_sp = base + kStackGuardBytes;
    f.ctx.uc_stack.ss_size = static_cast<std::size_t>(reinterpret_cast<char*>(&f) - (base + kStackGuardBytes));
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
#endif
}

static inline void switch_into(Worker& w, Fiber& f) {
#ifndef GPUCONV_EMU_UCONTEXT
    gpuconv_emu_swap(&w.scheduler_sp, f.sp);
#else
    swapcontext(&w.scheduler_ctx, &f.ctx);
#endif
}

static inline void switch_out(Fiber& f) {
#ifndef GPUCONV_EMU_UCONTEXT
    gpuconv_emu_swap(&f.sp, f.worker->scheduler_sp);
#else
    swapcontext(&f.ctx, &f.worker->scheduler_ctx);
#endif
}

static void fiber_main() {
    Fiber* f = self();
    const Entry* e = f->worker->launch->entry;
    e->invoke(e->fn, f->worker->launch->argv);
    f->state = FIBER_DONE;
    switch_out(*f);
    __builtin_unreachable();
}

// A lane at a collective: in the track build, its next accesses start new warp requests.
static inline void note_collective(Fiber* f) {
#ifdef GPUCONV_EMU_TRACK
    track_collective(f);
#else
    (void)f;
#endif
}

void syncthreads() {
    Fiber* f = self();
    note_collective(f);
    f->state = FIBER_AT_BARRIER;
    switch_out(*f);
}

void syncthreads_with_predicate(int pred) {
    Fiber* f = self();
    note_collective(f);
    f->predicate = pred;
    f->state = FIBER_AT_BARRIER;
    switch_out(*f);
}

void warp_collective(const char* name, WarpOp op, unsigned mask, void* data, const char* file,
                     unsigned line) {
    Fiber* f = self();
    if (mask == 0 && op != &activemask_op) kernel_fault("warp collective with mask 0", file, line, name);
    f->warp_name = name;
    f->warp_op = op;
    f->warp_mask = mask;
    f->warp_file = file;
    f->warp_line = line;
    f->warp_data = data;
    note_collective(f);
    f->state = FIBER_AT_WARP;
    switch_out(*f);  // resumed by resolve_warps once the rendezvous is complete
}

// "3,5-7,9" for the set bits of `lanes`
static std::string fmt_lanes(unsigned lanes) {
    std::string out;
    for (unsigned l = 0; l < 32;) {
        if (!((lanes >> l) & 1u)) {
            ++l;
            continue;
        }
        unsigned e = l;
        while (e + 1 < 32 && ((lanes >> (e + 1)) & 1u)) ++e;
        if (!out.empty()) out += ",";
        out += std::to_string(l);
        if (e > l) out += "-" + std::to_string(e);
        l = e + 1;
    }
    return out;
}

static std::string fmt_site(const Fiber* f) {
    char buf[64];
    snprintf(buf, sizeof buf, "(mask 0x%08x)", f->warp_mask);
    return std::string(f->warp_name) + " at " + (f->warp_file ? f->warp_file : "?") + ":" +
           std::to_string(f->warp_line) + " " + buf;
}

static bool same_site(const Fiber* a, const Fiber* b) {
    return a->warp_op == b->warp_op && a->warp_line == b->warp_line &&
           a->warp_name == b->warp_name &&
           (a->warp_file == b->warp_file ||
            (a->warp_file && b->warp_file && strcmp(a->warp_file, b->warp_file) == 0));
}

// After a pass every live thread of the block has stopped (barrier, warp collective, returned).
// Complete each warp rendezvous, or fail the launch naming the site and the lanes that are
// elsewhere: no lane can arrive later.
static bool resolve_warps(Worker& w, unsigned n) {
    Launch& L = *w.launch;
    Fiber* lanes[32];
    char err[256];
    for (unsigned base = 0; base < n; base += 32) {
        const unsigned width = std::min(32u, n - base);
        const unsigned exist = width == 32 ? 0xffffffffu : (1u << width) - 1u;
        bool any = false;
        for (unsigned l = 0; l < 32; ++l) {
            lanes[l] = l < width ? w.slot[base + l] : nullptr;
            if (lanes[l] && lanes[l]->state == FIBER_AT_WARP) any = true;
        }
        if (!any) continue;
        // phase 0 checks every rendezvous of the warp, phase 1 runs them: a lane is never
        // released by one group while another group (with a mask that overlaps) still names it
        unsigned checked = 0;  // lanes of the groups phase 0 has validated
        for (int phase = 0; phase < 2; ++phase)
        for (unsigned l = 0; l < width; ++l) {
            Fiber* f = lanes[l];
            if (!f || f->state != FIBER_AT_WARP || (phase == 0 && ((checked >> l) & 1u))) continue;
            unsigned mask = f->warp_mask;
            if (mask == 0) {  // __activemask: the lanes at this very site
                for (unsigned j = 0; j < width; ++j)
                    if (lanes[j] && lanes[j]->state == FIBER_AT_WARP && lanes[j]->warp_mask == 0 &&
                        same_site(lanes[j], f))
                        mask |= 1u << j;
            }
            std::string problem;
            if (phase == 1) {
                // checked in phase 0
            } else if (!((mask >> l) & 1u)) {
                problem = "lane " + std::to_string(l) + " is not in its own mask";
            } else if (mask & ~exist) {
                problem = "the mask names lanes " + fmt_lanes(mask & ~exist) +
                          " that do not exist (the block has " + std::to_string(n) + " threads)";
            } else {
                unsigned arrived = 0, returned = 0, barrier = 0;
                std::vector<std::pair<std::string, unsigned>> elsewhere;
                for (unsigned j = 0; j < width; ++j) {
                    if (!((mask >> j) & 1u)) continue;
                    Fiber* g = lanes[j];
                    if (!g) {
                        returned |= 1u << j;
                    } else if (g->state == FIBER_AT_BARRIER) {
                        barrier |= 1u << j;
                    } else if (g->state == FIBER_AT_WARP && same_site(g, f) &&
                               (f->warp_mask == 0 || g->warp_mask == mask)) {
                        arrived |= 1u << j;
                    } else {
                        const std::string where = g->state == FIBER_AT_WARP
                                                      ? "wait at " + fmt_site(g)
                                                      : "are in state " + std::to_string(g->state);
                        bool found = false;
                        for (auto& e : elsewhere)
                            if (e.first == where) {
                                e.second |= 1u << j;
                                found = true;
                            }
                        if (!found) elsewhere.emplace_back(where, 1u << j);
                    }
                }
                if (arrived != mask) {
                    problem = "lanes " + fmt_lanes(arrived) + " arrived";
                    if (returned) problem += "; lanes " + fmt_lanes(returned) + " have returned";
                    if (barrier)
                        problem += "; lanes " + fmt_lanes(barrier) + " wait at __syncthreads()";
                    for (auto& e : elsewhere) problem += "; lanes " + fmt_lanes(e.second) + " " + e.first;
                }
            }
            if (phase == 1) {
                err[0] = '\0';
                if (f->warp_op(lanes, mask, err, sizeof err) != 0) problem = err;
            }
            if (!problem.empty()) {
                L.fail(RC_DIVERGENT_BARRIER,
                       "warp collective " + fmt_site(f) + " in block " + fmt_uint3(w.block_idx) +
                           ", warp " + std::to_string(base / 32) + " (threads " +
                           std::to_string(base) + "-" + std::to_string(base + width - 1) +
                           "): " + problem);
                return false;
            }
            if (phase == 0) {
                checked |= mask;
                continue;
            }
            for (unsigned j = 0; j < width; ++j)
                if ((mask >> j) & 1u) lanes[j]->state = FIBER_READY;
            ++w.warp_collectives;
        }
    }
    return true;
}

void kernel_fault(const char* what, const char* file, unsigned line, const char* func) {
    Fiber* f = tls.current;  // (a TLS lookup: this may also be called outside a kernel)
    std::string msg = what;
    if (file) msg += std::string(" at ") + file + ":" + std::to_string(line);
    if (func) msg += std::string(" in ") + func;
    if (!f) {
        fprintf(stderr, "gpuconv emulator: %s (outside a kernel)\n", msg.c_str());
        abort();
    }
    f->worker->launch->fail(RC_KERNEL_FAULT, msg + " (thread " + fmt_uint3(f->thread_idx) +
                                                 " of block " + fmt_uint3(f->block_idx) + ")");
    f->state = FIBER_FAULTED;
    switch_out(*f);
    __builtin_unreachable();
}

// Runs block number `linear` (x fastest). Returns false if the launch must stop.
//
// A thread gets a stack region when it first runs and gives it back when it returns, so in a
// kernel without barriers every thread of the block reuses the same (cache-hot) stack; a thread
// that waits at a barrier keeps its region until it is released.
static bool run_block(Worker& w, unsigned long long linear) {
    Launch& L = *w.launch;
    ThreadState& ts = tls;
    const unsigned long long gx = L.grid.x, gy = L.grid.y;
    w.block_idx = uint3{static_cast<unsigned>(linear % gx),
                        static_cast<unsigned>((linear / gx) % gy),
                        static_cast<unsigned>(linear / (gx * gy))};
    if (L.flags & FLAG_FILL_SHARED) fill_shared_garbage(w);
    const unsigned n = L.nthreads;
#ifdef GPUCONV_EMU_TRACK
    Tracker* tracker = static_cast<Tracker*>(L.tracker);
    if (tracker)
        track_begin_block(*tracker, linear, w.dynamic_shared, L.shared_bytes, w.tls_lo,
                          w.tls_size, n);
#endif
    const unsigned bx = L.block.x, bxy = L.block.x * L.block.y;
    w.free_list.assign(w.regions.rbegin(), w.regions.rend());
    std::fill(w.slot.begin(), w.slot.end(), nullptr);
    unsigned long long rng = L.seed ^ (linear * 0x2545f4914f6cdd1dull);
    unsigned done = 0;
    uint3 first_exited{0, 0, 0};
    for (unsigned round = 0;; ++round) {
        unsigned* order = w.order.data();
        if (L.flags & FLAG_ORDER_SHUFFLE) {
            for (unsigned i = n; i > 1; --i) {
                const unsigned j = static_cast<unsigned>(splitmix64(rng) % i);
                std::swap(order[i - 1], order[j]);
            }
        }
        unsigned waiting = 0;
        // FLAG_WARP_SERIAL: one warp at a time runs to the end of its barrier interval (every
        // lane at __syncthreads or returned; warps in descending order with
        // FLAG_ORDER_REVERSE), so a warp's shared-memory writes of the interval land before
        // another warp's reads of it: a missing barrier between them shows in the output.
        // Otherwise all warps run together, meeting round-robin at each warp collective.
        const unsigned nwarps = (n + 31) / 32;
        const bool warp_serial = (L.flags & FLAG_WARP_SERIAL) != 0;
        for (unsigned wk = 0; wk < (warp_serial ? nwarps : 1u); ++wk) {
            const unsigned only = !warp_serial ? ~0u
                                  : (L.flags & FLAG_ORDER_REVERSE) ? nwarps - 1 - wk : wk;
            unsigned at_warp = 0;
            for (unsigned k = 0; k < n; ++k) {
                const unsigned t = order[k];
                if (only != ~0u && t / 32 != only) continue;
                Fiber* f = w.slot[t];
                if (round == 0) {  // start thread t on a free region
                    if (L.cancelled()) {  // abandon the block, like a divergent barrier does
                        L.fail(RC_CANCELLED, "launch cancelled");
                        ts.current = nullptr;
                        return false;
                    }
                    if (w.free_list.empty()) {  // regions are taken from the pool on demand
                        const std::size_t had = w.regions.size();
                        if (!acquire_stacks(w.regions, std::min<std::size_t>(n, had + 32))) {
                            L.fail(RC_INTERNAL, "could not allocate fiber stacks (mmap failed)");
                            return false;
                        }
                        w.free_list.assign(w.regions.rbegin(), w.regions.rend() - had);
                    }
                    f = w.free_list.back();
                    w.free_list.pop_back();
                    f->thread_idx = uint3{t % bx, (t / bx) % L.block.y, t / bxy};
                    f->block_idx = w.block_idx;
                    f->block_dim = L.block;
                    f->grid_dim = L.grid;
                    f->dynamic_shared = w.dynamic_shared;
                    f->float_atomics = &w.float_atomics;
                    f->barrier_predicate_sum = &w.barrier_predicate_sum;
                    f->worker = &w;
                    f->predicate = 0;
                    f->lane = t & 31u;
                    f->async_n = 0;
                    f->async_group = 0;
                    init_fiber_context(*f);
                } else if (!f) {
                    continue;  // returned in an earlier round
                }
                f->state = FIBER_READY;
                ts.current = f;
                switch_into(w, *f);
                ++w.switches;
                if (f->state == FIBER_AT_BARRIER) {
                    w.slot[t] = f;
                    ++waiting;
                    continue;
                }
                if (f->state == FIBER_AT_WARP) {
                    w.slot[t] = f;
                    ++at_warp;
                    continue;
                }
                if (f->state == FIBER_FAULTED) {
                    ts.current = nullptr;
                    return false;  // kernel_fault recorded the message
                }
                if (done++ == 0) first_exited = f->thread_idx;  // FIBER_DONE
                w.slot[t] = nullptr;
                w.free_list.push_back(f);
            }
            // Warp collectives: release each complete rendezvous and run the released lanes on
            // (in the round's order, reshuffled per pass) until every thread of the block has
            // returned or waits at the barrier.
            while (at_warp) {
                if (L.cancelled()) {  // e.g. a warp that spins on a vote: stop between passes too
                    L.fail(RC_CANCELLED, "launch cancelled");
                    ts.current = nullptr;
                    return false;
                }
                if (!resolve_warps(w, n)) {
                    ts.current = nullptr;
                    return false;
                }
                at_warp = 0;
                if (L.flags & FLAG_ORDER_SHUFFLE) {
                    for (unsigned i = n; i > 1; --i) {
                        const unsigned j = static_cast<unsigned>(splitmix64(rng) % i);
                        std::swap(order[i - 1], order[j]);
                    }
                }
                for (unsigned k = 0; k < n; ++k) {
                    const unsigned t = order[k];
                    if (only != ~0u && t / 32 != only) continue;
                    Fiber* f = w.slot[t];
                    if (!f || f->state != FIBER_READY) continue;
                    ts.current = f;
                    switch_into(w, *f);
                    ++w.switches;
                    if (f->state == FIBER_AT_BARRIER) {
                        ++waiting;
                        continue;
                    }
                    if (f->state == FIBER_AT_WARP) {
                        ++at_warp;
                        continue;
                    }
                    if (f->state == FIBER_FAULTED) {
                        ts.current = nullptr;
                        return false;
                    }
                    if (done++ == 0) first_exited = f->thread_idx;
                    w.slot[t] = nullptr;
                    w.free_list.push_back(f);
                }
            }
        }  // warps (one pass unless FLAG_WARP_SERIAL)
        ts.current = nullptr;
#ifdef GPUCONV_EMU_TRACK
        if (tracker) track_flush(*tracker);  // every segment so far is complete
#endif
        if (waiting == 0) return true;  // every thread returned
        if (done > 0) {                 // some threads returned, the others wait at a barrier
            uint3 waiter{0, 0, 0};
            for (unsigned t = 0; t < n; ++t)
                if (w.slot[t]) {
                    waiter = w.slot[t]->thread_idx;
                    break;
                }
            L.fail(RC_DIVERGENT_BARRIER,
                   "divergent __syncthreads() in block " + fmt_uint3(w.block_idx) + ": " +
                       std::to_string(waiting) + " of " + std::to_string(n) +
                       " threads wait at barrier #" + std::to_string(round + 1) + " (e.g. thread " +
                       fmt_uint3(waiter) + ") while " + std::to_string(done) +
                       " have returned (e.g. thread " + fmt_uint3(first_exited) + ")");
            return false;
        }
        int sum = 0;  // every thread waits at the barrier: release them all
        for (unsigned t = 0; t < n; ++t) {
            sum += w.slot[t]->predicate;
            w.slot[t]->predicate = 0;
        }
        w.barrier_predicate_sum = sum;
        ++w.barriers;
    }
}

static void run_worker(Launch* L) {
    Worker w;
    w.launch = L;
    w.slot.assign(L->nthreads, nullptr);
    w.order.resize(L->nthreads);
    for (unsigned t = 0; t < L->nthreads; ++t)
        w.order[t] = (L->flags & FLAG_ORDER_REVERSE) ? L->nthreads - 1 - t : t;
    const ThreadState saved = tls;  // the calling thread may be inside another module's launch
    tls = ThreadState{nullptr, &w, L->tracker, 0, 0};

    stack_t old_altstack;
    bool altstack_set = false;
    const std::size_t alt_size = 256 * 1024;
    if (L->flags & FLAG_CHECKED) {  // the SIGSEGV handler must run on a stack that is not full
        w.altstack = mmap(nullptr, alt_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                          -1, 0);
        if (w.altstack != MAP_FAILED) {
            stack_t ss;
            ss.ss_sp = w.altstack;
            ss.ss_size = alt_size;
            ss.ss_flags = 0;
            altstack_set = sigaltstack(&ss, &old_altstack) == 0;
        } else {
            w.altstack = nullptr;
        }
    }

    bool ok = true;
    if (L->shared_bytes) {
        if (L->flags & FLAG_CHECKED) {
            w.dynamic_shared = reinterpret_cast<unsigned char*>(
                alloc_guarded(L->shared_bytes, (L->flags & FLAG_GUARD_HEAD) != 0, 64, -1));
        } else {
            w.shared_alloc = static_cast<unsigned char*>(
                aligned_alloc(64, round_up(L->shared_bytes, 64)));
            w.dynamic_shared = w.shared_alloc;
        }
        if (!w.dynamic_shared) {
            ok = false;
            L->fail(RC_INTERNAL, "could not allocate dynamic shared memory");
        }
    }
    if (ok && ((L->flags & FLAG_FILL_SHARED) || L->tracker)) find_tls_block(w);

    while (ok && !L->failed.load(std::memory_order_relaxed)) {
        if (L->cancelled()) {
            L->fail(RC_CANCELLED, "launch cancelled");
            break;
        }
        const unsigned long long i = L->next_block.fetch_add(1);
        if (i >= L->nblocks) break;
        const unsigned long long b = L->block_order.empty() ? i : L->block_order[i];
        if (!run_block(w, b)) break;
        L->blocks_run.fetch_add(1, std::memory_order_relaxed);
    }

    L->barriers.fetch_add(w.barriers);
    L->switches.fetch_add(w.switches);
    L->float_atomics.fetch_add(w.float_atomics);
    release_stacks(w.regions);
    free(w.shared_alloc);
    if (altstack_set) {
        stack_t off;
        memset(&off, 0, sizeof off);
        off.ss_flags = SS_DISABLE;
        sigaltstack(&off, nullptr);
        if (!(old_altstack.ss_flags & SS_DISABLE)) sigaltstack(&old_altstack, nullptr);
    }
    if (w.altstack) munmap(w.altstack, alt_size);
    tls = saved;
}

static unsigned long long now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<unsigned long long>(ts.tv_sec) * 1000000000ull +
           static_cast<unsigned long long>(ts.tv_nsec);
}

static void copy_error(const std::string& msg, char* errbuf, std::size_t errlen) {
    if (!errbuf || !errlen) return;
    const std::size_t n = std::min(msg.size(), errlen - 1);
    memcpy(errbuf, msg.data(), n);
    errbuf[n] = '\0';
}

// stats_out: [blocks run, threads per block, barriers released, fiber switches, float atomics,
//             elapsed ns, worker threads]
static int do_launch(int index, const unsigned* grid, const unsigned* block,
                     unsigned long long shared_bytes, void** argv, unsigned flags,
                     unsigned long long seed, int nthreads, const int* cancel, char* errbuf,
                     std::size_t errlen, unsigned long long* stats_out,
                     void* tracker = nullptr) {
    const std::vector<Entry>& table = entries();
    if (index < 0 || static_cast<std::size_t>(index) >= table.size()) {
        copy_error("no entry #" + std::to_string(index), errbuf, errlen);
        return RC_INVALID;
    }
    const unsigned long long t0 = now_ns();
    Launch L;
    L.entry = &table[static_cast<std::size_t>(index)];
    L.argv = argv;
    L.grid = dim3(grid[0], grid[1], grid[2]);
    L.block = dim3(block[0], block[1], block[2]);
    L.shared_bytes = static_cast<std::size_t>(shared_bytes);
    L.flags = flags;
    L.seed = seed;
    L.cancel = cancel;
    L.tracker = tracker;
    L.nblocks = static_cast<unsigned long long>(grid[0]) * grid[1] * grid[2];
    L.nthreads = block[0] * block[1] * block[2];
    if (L.nblocks == 0 || L.nthreads == 0 || L.nthreads > 1024) {
        copy_error("invalid launch configuration", errbuf, errlen);
        return RC_INVALID;
    }
    if ((flags & (FLAG_ORDER_REVERSE | FLAG_ORDER_SHUFFLE)) && L.nblocks > 1) {
        if ((flags & FLAG_ORDER_SHUFFLE) && L.nblocks <= (1ull << 24)) {
            L.block_order.resize(L.nblocks);
            for (unsigned long long i = 0; i < L.nblocks; ++i) L.block_order[i] = i;
            unsigned long long rng = seed;
            for (unsigned long long i = L.nblocks; i > 1; --i)
                std::swap(L.block_order[i - 1], L.block_order[splitmix64(rng) % i]);
        } else if (L.nblocks <= (1ull << 24)) {
            L.block_order.resize(L.nblocks);
            for (unsigned long long i = 0; i < L.nblocks; ++i) L.block_order[i] = L.nblocks - 1 - i;
        }
    }
    static const unsigned hardware = std::max(1u, std::thread::hardware_concurrency());
    unsigned workers = nthreads > 0 ? static_cast<unsigned>(nthreads) : hardware;
    if ((flags & FLAG_SERIAL) || tracker) workers = 1;
    if (static_cast<unsigned long long>(workers) > L.nblocks)
        workers = static_cast<unsigned>(L.nblocks);
    std::vector<std::thread> pool;
    try {
        for (unsigned i = 1; i < workers; ++i) pool.emplace_back(run_worker, &L);
    } catch (...) {
        L.fail(RC_INTERNAL, "could not start worker threads");
    }
    run_worker(&L);
    for (std::thread& t : pool) t.join();
    if (stats_out) {
        stats_out[0] = L.blocks_run.load();
        stats_out[1] = L.nthreads;
        stats_out[2] = L.barriers.load();
        stats_out[3] = L.switches.load();
        stats_out[4] = L.float_atomics.load();
        stats_out[5] = now_ns() - t0;
        stats_out[6] = workers;
    }
    fflush(stdout);  // kernel printf output appears when the launch returns
    if (L.rc != RC_OK) copy_error(L.error, errbuf, errlen);
    return L.rc;
}

}  // namespace gpuconv_emu

// glibc's assert() inside a kernel: report it as a kernel fault instead of aborting the process.
// Defined here with hidden visibility, so only this module's calls bind to it.
extern "C" void __assert_fail(const char* expr, const char* file, unsigned int line,
                              const char* func) noexcept {
    std::string what = std::string("assertion `") + expr + "' failed";
    ::gpuconv_emu::kernel_fault(what.c_str(), file, line, func);
}

// ---------------------------------------------------------------------------------------------
// C ABI, used through ctypes by _abi.py
// ---------------------------------------------------------------------------------------------
GPUCONV_EMU_API int gpuconv_emu_abi_version() { return 3; }
GPUCONV_EMU_API const char* gpuconv_emu_fiber_impl() { return ::gpuconv_emu::kFiberImpl; }
GPUCONV_EMU_API int gpuconv_emu_entry_count() {
    return static_cast<int>(::gpuconv_emu::entries().size());
}
GPUCONV_EMU_API const char* gpuconv_emu_entry_name(int i) {
    return ::gpuconv_emu::entries()[static_cast<std::size_t>(i)].name;
}
GPUCONV_EMU_API const char* gpuconv_emu_entry_signature(int i) {
    return ::gpuconv_emu::entries()[static_cast<std::size_t>(i)].signature.c_str();
}

GPUCONV_EMU_API const char* gpuconv_emu_entry_alignments(int i) {
    return ::gpuconv_emu::entries()[static_cast<std::size_t>(i)].alignments.c_str();
}

GPUCONV_EMU_API int gpuconv_emu_launch(int index, const unsigned* grid, const unsigned* block,
                                       unsigned long long shared_bytes, void** argv,
                                       unsigned flags, unsigned long long seed, int nthreads,
                                       const int* cancel, char* errbuf, std::size_t errlen,
                                       unsigned long long* stats_out) {
    flags &= ~(::gpuconv_emu::FLAG_CHECKED | ::gpuconv_emu::FLAG_GUARD_HEAD);
    return ::gpuconv_emu::do_launch(index, grid, block, shared_bytes, argv, flags, seed, nthreads,
                                    cancel, errbuf, errlen, stats_out);
}

// Checked launch (subprocess only: a fault ends the process with exit status 77 after writing
// one line "kind=... param=... offset=..." to report_fd). Each array argument i
// (nbytes[i] >= 0) is copied into a guarded buffer -- ending exactly at a guard page, or with
// FLAG_GUARD_HEAD starting right after one -- and copied back after the launch. alias[i] >= 0
// says argument i is the same array as the earlier argument alias[i].
GPUCONV_EMU_API int gpuconv_emu_checked_launch(int index, const unsigned* grid,
                                               const unsigned* block,
                                               unsigned long long shared_bytes, void** argv,
                                               int nargs, const long long* nbytes,
                                               const int* alias, unsigned flags,
                                               unsigned long long seed, int nthreads,
                                               int report_fd, char* errbuf, std::size_t errlen,
                                               unsigned long long* stats_out) {
    using namespace ::gpuconv_emu;
    flags |= FLAG_CHECKED;
    const bool head = (flags & FLAG_GUARD_HEAD) != 0;
    g_report_fd.store(report_fd);
    install_segv_handler();
    free_guarded_all();
    std::vector<void*> copies(static_cast<std::size_t>(nargs), nullptr);
    std::vector<void*> local_argv(argv, argv + nargs);
    for (int i = 0; i < nargs; ++i) {
        if (nbytes[i] < 0) continue;
        void* original = *static_cast<void**>(argv[i]);
        if (alias[i] >= 0) {
            copies[i] = copies[alias[i]];
        } else {
            const std::size_t n = static_cast<std::size_t>(nbytes[i]);
            char* data = alloc_guarded(n, head, 1, i);
            if (!data) {
                free_guarded_all();
                copy_error("could not allocate a guarded buffer", errbuf, errlen);
                return RC_INTERNAL;
            }
            if (n) memcpy(data, original, n);
            copies[i] = data;
        }
        local_argv[i] = &copies[i];
    }
    const int rc = do_launch(index, grid, block, shared_bytes, local_argv.data(), flags, seed,
                             nthreads, nullptr, errbuf, errlen, stats_out);
    for (int i = 0; i < nargs; ++i) {
        if (nbytes[i] <= 0 || alias[i] >= 0) continue;
        memcpy(*static_cast<void**>(argv[i]), copies[i], static_cast<std::size_t>(nbytes[i]));
    }
    free_guarded_all();
    return rc;
}

#ifdef GPUCONV_EMU_TRACK
// Tracked launch (the track build only; see track.h): serial, every access recorded. nbytes[i]
// is the byte size of array argument i (-1: a scalar). mode: TRACK_RACE | TRACK_COUNT. A race
// found returns RC_RACE with the message in errbuf. *report gets a malloc'd text (free it with
// gpuconv_emu_free): one line per access site, see track_report.
GPUCONV_EMU_API int gpuconv_emu_tracked_launch(int index, const unsigned* grid,
                                               const unsigned* block,
                                               unsigned long long shared_bytes, void** argv,
                                               int nargs, const long long* nbytes, unsigned flags,
                                               unsigned mode, unsigned long long seed,
                                               char* errbuf, std::size_t errlen,
                                               unsigned long long* stats_out, char** report) {
    using namespace ::gpuconv_emu;
    Tracker t;
    t.mode = mode;
    t.grid = dim3(grid[0], grid[1], grid[2]);
    t.block_dim = dim3(block[0], block[1], block[2]);
    Dl_info di;
    if (dladdr(reinterpret_cast<void*>(&gpuconv_emu_tracked_launch), &di))
        t.lib_base = reinterpret_cast<std::uintptr_t>(di.dli_fbase);
    for (int i = 0; i < nargs; ++i) {
        if (nbytes[i] <= 0) continue;
        const std::uintptr_t lo = reinterpret_cast<std::uintptr_t>(*static_cast<void**>(argv[i]));
        bool alias = false;  // the same array passed twice: one shadow, the first parameter
        for (const TrackRange& r : t.globals) alias |= r.lo == lo && r.hi == lo + nbytes[i];
        if (alias) continue;
        TrackRange r;
        r.lo = lo;
        r.hi = lo + static_cast<std::size_t>(nbytes[i]);
        r.param = i;
        if (mode & TRACK_RACE) {
            r.writer.assign(static_cast<std::size_t>(nbytes[i]), 0);
            r.reader.assign(static_cast<std::size_t>(nbytes[i]), 0);
            r.how.assign(static_cast<std::size_t>(nbytes[i]), 0);
        }
        t.globals.push_back(std::move(r));
    }
    int rc = do_launch(index, grid, block, shared_bytes, argv, flags | FLAG_SERIAL, seed, 1,
                       nullptr, errbuf, errlen, stats_out, &t);
    if (rc == RC_OK && t.conflict) {
        rc = RC_RACE;
        copy_error(t.message, errbuf, errlen);
    }
    if (report) {
        const std::string text = track_report(t);
        *report = static_cast<char*>(malloc(text.size() + 1));
        if (*report) memcpy(*report, text.c_str(), text.size() + 1);
    }
    return rc;
}
GPUCONV_EMU_API void gpuconv_emu_free(char* p) { free(p); }
#endif

#endif  // GPUCONV_EMU_RUNTIME_H
