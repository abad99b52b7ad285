// track.h -- per-access instrumentation for the emulator's "track" build, included by runtime.h
// when GPUCONV_EMU_TRACK is defined. It serves race_check()'s cross-block check and counters().
//
// The track build compiles the module with `g++ -fsanitize=thread`: the compiler then calls
// __tsan_readN / __tsan_writeN before every load and store, and __tsan_atomicN_* for every
// atomic builtin. No ThreadSanitizer runtime is linked. This file defines those entry points
// itself, and they feed the Tracker of the launch on this OS thread (tls.tracker; tracked
// launches run serially, on the calling thread):
//  * An access is kept only if it falls in an array argument ("global") or in the block's
//    shared memory (the dynamic buffer, or this module's thread-local block, which holds the
//    static __shared__ arrays). Stack and runtime accesses are dropped by their address.
//  * Race (TRACK_RACE): a shadow per byte of each array argument remembers which block wrote
//    it (plainly or atomically) and which block read it. A write that meets another block's
//    write when not both are atomic is a lost update. A read and a write of the same byte by
//    different blocks (in either order) make the result depend on the block order. Either one
//    fails the launch with RC_RACE, naming the parameter and the byte offset.
//  * Counting (TRACK_COUNT), global sectors as if every array began on a 256-byte boundary
//    (cudaMalloc's alignment; NumPy gives 16): the lanes of a warp run one after another between collectives,
//    so the k-th access of each lane at one site (instruction address) since the lane's last
//    collective is the same warp-wide request on a GPU. A global request counts its distinct
//    32-byte sectors; a shared request counts its wavefronts: per phase (32 lanes for accesses
//    of up to 4 bytes, 16 for 8 bytes, 8 for 16 bytes), the largest number of distinct 4-byte
//    words that fall into one of the 32 banks. ldmatrix counts one phase per 8x8 matrix;
//    cp.async counts its global read and its shared write.
// Kernel code pays one function call per memory access in this build; only tracked launches
// use it.
#ifndef GPUCONV_EMU_TRACK_H
#define GPUCONV_EMU_TRACK_H

#include <map>
#include <set>
#include <tuple>
#include <unordered_map>

namespace gpuconv_emu {

enum : unsigned { TRACK_RACE = 1u << 0, TRACK_COUNT = 1u << 1 };
enum : int { TRACK_NONE = 0, TRACK_GLOBAL = 1, TRACK_SHARED = 2 };

// the site of an access: an instruction address (compiler-instrumented loads and stores) or a
// file:line (the primitives of mma.cuh, which report their caller's line)
struct TrackSite {
    std::uintptr_t pc;
    const char* file;
    unsigned line;
    bool operator<(const TrackSite& o) const {
        return std::tie(pc, file, line) < std::tie(o.pc, o.file, o.line);
    }
};

struct TrackRange {  // one array argument
    std::uintptr_t lo, hi;
    int param;
    std::vector<std::uint32_t> writer, reader;  // per byte: block + 1; 0 none; kSeveral
    std::vector<unsigned char> how;             // per byte: kPlain | kAtomic writes seen
};

struct TrackAccess {
    unsigned lane;
    std::uintptr_t addr;
    unsigned size;
};

struct TrackStats {  // per (site, space, kind)
    unsigned long long requests = 0, units = 0, ideal = 0, bytes = 0;
};

struct Tracker {
    static constexpr std::uint32_t kSeveral = 0xffffffffu;
    static constexpr unsigned char kPlain = 1, kAtomic = 2;
    unsigned mode = 0;
    std::vector<TrackRange> globals;
    std::uintptr_t dyn_lo = 0, dyn_hi = 0, tls_lo = 0, tls_hi = 0, self_lo = 0, self_hi = 0;
    unsigned long long block = 0;
    dim3 grid, block_dim;
    std::uintptr_t lib_base = 0;
    // race: the first lost update, else the first cross-block read/write
    bool conflict = false, lost = false;
    std::string message;
    // counting: per thread of the block, its collective count and per-site occurrences since
    std::vector<unsigned> segment;
    // (occurrences count per site AND kind: a cp.async with a source reads and writes, a
    // zero-filling one only writes, and both must still line up with the other lanes)
    std::vector<std::map<std::pair<TrackSite, int>, unsigned>> occurrence;
    // (warp, segment, site, occurrence, space, kind) -> the lanes' accesses
    std::map<std::tuple<unsigned, unsigned, TrackSite, unsigned, int, int>,
             std::vector<TrackAccess>>
        pending;
    std::map<std::tuple<TrackSite, int, int>, TrackStats> stats;
};

// the kinds an access is counted as (reported by name; see kKindNames)
enum : int {
    TK_READ = 0,
    TK_WRITE = 1,
    TK_ATOMIC = 2,
    TK_ASYNC_READ = 3,   // cp.async's global read
    TK_ASYNC_WRITE = 4,  // cp.async's shared write
    TK_LDMATRIX = 5,
};
static const char* const kKindNames[] = {"load", "store", "atomic",
                                         "cp.async.load", "cp.async.store", "ldmatrix"};

static std::string block_text(const Tracker& t, std::uint32_t who) {
    if (who == Tracker::kSeveral) return "several blocks";
    const unsigned long long b = who - 1u;
    const unsigned long long gx = t.grid.x, gy = t.grid.y;
    return "block (" + std::to_string(b % gx) + "," + std::to_string((b / gx) % gy) + "," +
           std::to_string(b / (gx * gy)) + ")";
}

__attribute__((no_sanitize_thread)) static int track_space(const Tracker& t, std::uintptr_t a,
                                                           const TrackRange** range) {
    for (const TrackRange& r : t.globals)
        if (a >= r.lo && a < r.hi) {
            *range = &r;
            return TRACK_GLOBAL;
        }
    if (a >= t.dyn_lo && a < t.dyn_hi) return TRACK_SHARED;
    if (a >= t.tls_lo && a < t.tls_hi && !(a >= t.self_lo && a < t.self_hi)) return TRACK_SHARED;
    return TRACK_NONE;
}

__attribute__((no_sanitize_thread)) static void track_race(Tracker& t, TrackRange& r,
                                                           std::uintptr_t a, unsigned size,
                                                           int kind) {
    const std::uint32_t me = static_cast<std::uint32_t>(t.block + 1);
    const bool read = kind == TK_READ || kind == TK_ASYNC_READ;
    const std::size_t first = a - r.lo;
    const std::size_t last = std::min<std::size_t>(first + size, r.hi - r.lo);
    for (std::size_t i = first; i < last; ++i) {
        const std::uint32_t w = r.writer[i], rd = r.reader[i];
        const char* what = nullptr;
        std::uint32_t other = 0;
        if (read) {
            if (w && w != me) {
                what = "read by %s and written by %s in the same launch (cross-block read after "
                       "write): the value read depends on the order in which blocks run";
                other = w;
            }
            r.reader[i] = (rd == 0 || rd == me) ? me : Tracker::kSeveral;
        } else {
            const bool plain = kind == TK_WRITE || kind == TK_ASYNC_WRITE;
            if (w && w != me && (plain || (r.how[i] & Tracker::kPlain))) {
                what = "written by %s and by %s, not all of the writes atomic: a lost update "
                       "(use atomicAdd, or give each element to one block)";
                other = w;
            } else if (rd && rd != me) {
                what = "written by %s and read by %s in the same launch (cross-block write "
                       "after read): the value read depends on the order in which blocks run";
                other = rd;
            }
            r.writer[i] = (w == 0 || w == me) ? me : Tracker::kSeveral;
            r.how[i] |= plain ? Tracker::kPlain : Tracker::kAtomic;
        }
        const bool is_lost = what && !read && other == w && w != me;
        if (what && (!t.conflict || (is_lost && !t.lost))) {
            t.conflict = true;
            t.lost = is_lost;
            char text[512];
            snprintf(text, sizeof text, what, block_text(t, me).c_str(),
                     block_text(t, other).c_str());
            t.message = "parameter " + std::to_string(r.param) + " byte offset " +
                        std::to_string(i) + ": " + text;
        }
    }
}

__attribute__((no_sanitize_thread)) static void track_record(Tracker& t, Fiber* f,
                                                             std::uintptr_t a, unsigned size,
                                                             int kind, TrackSite site) {
    const TrackRange* range = nullptr;
    const int space = track_space(t, a, &range);
    if (space == TRACK_NONE || size == 0) return;
    if ((t.mode & TRACK_RACE) && space == TRACK_GLOBAL)
        track_race(t, const_cast<TrackRange&>(*range), a, size, kind);
    if (!(t.mode & TRACK_COUNT)) return;
    // Global sectors are counted as if each array started on a 256-byte boundary, as
    // cudaMalloc'd (and CuPy's) buffers do: NumPy aligns only to 16 bytes.
    if (space == TRACK_GLOBAL)
        a = (static_cast<std::uintptr_t>(range - t.globals.data() + 1) << 48) + (a - range->lo);
    const unsigned tid = f->thread_idx.x + f->thread_idx.y * t.block_dim.x +
                         f->thread_idx.z * t.block_dim.x * t.block_dim.y;
    if (site.pc) site.pc -= t.lib_base;  // an offset into the library, for addr2line
    const unsigned occ = t.occurrence[tid][std::make_pair(site, kind)]++;
    t.pending[std::make_tuple(tid / 32, t.segment[tid], site, occ, space, kind)].push_back(
        TrackAccess{tid & 31u, a, size});
}

// Count the requests of the finished segments (all of them: called when every thread of the
// block waits at a barrier or has returned).
__attribute__((no_sanitize_thread)) static void track_flush(Tracker& t) {
    for (auto& item : t.pending) {
        const TrackSite& site = std::get<2>(item.first);
        const int space = std::get<4>(item.first), kind = std::get<5>(item.first);
        const std::vector<TrackAccess>& acc = item.second;
        TrackStats& s = t.stats[std::make_tuple(site, space, kind)];
        s.requests += 1;
        if (space == TRACK_GLOBAL) {
            std::set<std::uintptr_t> sectors, bytes;
            for (const TrackAccess& x : acc)
                for (std::uintptr_t b = x.addr; b < x.addr + x.size; ++b) {
                    sectors.insert(b >> 5);
                    bytes.insert(b);
                }
            s.units += sectors.size();
            s.ideal += (bytes.size() + 31) / 32;
            s.bytes += bytes.size();
        } else {
            unsigned widest = 0;
            for (const TrackAccess& x : acc) widest = std::max(widest, x.size);
            const unsigned per_phase = widest <= 4 ? 32 : 128 / std::min(widest, 16u);
            std::map<unsigned, std::map<unsigned, std::set<std::uintptr_t>>> phases;
            for (const TrackAccess& x : acc) {
                for (std::uintptr_t w = x.addr >> 2; w <= (x.addr + x.size - 1) >> 2; ++w)
                    phases[x.lane / per_phase][static_cast<unsigned>(w & 31)].insert(w);
                s.bytes += x.size;
            }
            for (auto& phase : phases) {
                std::size_t most = 1;
                for (auto& bank : phase.second) most = std::max(most, bank.second.size());
                s.units += most;
                s.ideal += 1;
            }
        }
    }
    t.pending.clear();
}

__attribute__((no_sanitize_thread)) static void track_access(const volatile void* p,
                                                             std::size_t size, int kind,
                                                             TrackSite site) {
    ThreadState& ts = tls;
    Tracker* t = static_cast<Tracker*>(ts.tracker);
    if (!t || ts.track_busy || ts.track_paused || !ts.current) return;
    ts.track_busy = 1;
    track_record(*t, ts.current, reinterpret_cast<std::uintptr_t>(p),
                 static_cast<unsigned>(size), kind, site);
    ts.track_busy = 0;
}

// A lane reached a collective (__syncthreads, a warp collective): its next accesses belong to
// the next request of each site.
__attribute__((no_sanitize_thread)) static void track_collective(Fiber* f) {
    ThreadState& ts = tls;
    Tracker* t = static_cast<Tracker*>(ts.tracker);
    if (!t || !(t->mode & TRACK_COUNT) || ts.track_busy) return;
    ts.track_busy = 1;
    const unsigned tid = f->thread_idx.x + f->thread_idx.y * t->block_dim.x +
                         f->thread_idx.z * t->block_dim.x * t->block_dim.y;
    ++t->segment[tid];
    t->occurrence[tid].clear();
    ts.track_busy = 0;
}

// ldmatrix as one warp-wide shared read: per 8x8 matrix, 8 rows of 16 bytes in one phase.
__attribute__((no_sanitize_thread)) static void track_ldmatrix(const unsigned char* const* rows,
                                                               unsigned nmat, const char* file,
                                                               unsigned line) {
    ThreadState& ts = tls;
    Tracker* t = static_cast<Tracker*>(ts.tracker);
    if (!t || !(t->mode & TRACK_COUNT) || ts.track_busy) return;
    ts.track_busy = 1;
    TrackStats& s = t->stats[std::make_tuple(TrackSite{0, file, line}, TRACK_SHARED,
                                             static_cast<int>(TK_LDMATRIX))];
    s.requests += 1;
    for (unsigned j = 0; j < nmat; ++j) {
        std::map<unsigned, std::set<std::uintptr_t>> banks;
        for (unsigned r = 0; r < 8; ++r) {
            const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(rows[8 * j + r]);
            for (std::uintptr_t w = a >> 2; w < (a + 16) >> 2; ++w)
                banks[static_cast<unsigned>(w & 31)].insert(w);
        }
        std::size_t most = 1;
        for (auto& bank : banks) most = std::max(most, bank.second.size());
        s.units += most;
        s.ideal += 1;
        s.bytes += 128;
    }
    ts.track_busy = 0;
}

// The hooks of cuda_shim.h's primitives
__attribute__((no_sanitize_thread)) void track_note_ldmatrix(const unsigned char* const* rows,
                                                             unsigned nmat, const char* file,
                                                             unsigned line) {
    track_ldmatrix(rows, nmat, file, line);
}
__attribute__((no_sanitize_thread)) void track_note_async(const void* dst, const void* src,
                                                          unsigned cp_size, unsigned src_size,
                                                          const char* file, unsigned line) {
    ThreadState& ts = tls;
    Tracker* t = static_cast<Tracker*>(ts.tracker);
    if (!t || ts.track_busy || !ts.current) return;
    ts.track_busy = 1;
    const TrackSite site{0, file, line};
    const std::uintptr_t s = reinterpret_cast<std::uintptr_t>(src);
    if (src_size) track_record(*t, ts.current, s, src_size, TK_ASYNC_READ, site);
    track_record(*t, ts.current, reinterpret_cast<std::uintptr_t>(dst), cp_size, TK_ASYNC_WRITE,
                 site);
    ts.track_busy = 0;
}

// Set up before a block runs.
__attribute__((no_sanitize_thread)) static void track_begin_block(Tracker& t,
                                                                  unsigned long long linear,
                                                                  unsigned char* dyn,
                                                                  std::size_t dyn_bytes,
                                                                  unsigned char* tls_lo,
                                                                  std::size_t tls_size,
                                                                  unsigned nthreads) {
    t.block = linear;
    t.dyn_lo = reinterpret_cast<std::uintptr_t>(dyn);
    t.dyn_hi = t.dyn_lo + (dyn ? dyn_bytes : 0);
    t.tls_lo = reinterpret_cast<std::uintptr_t>(tls_lo);
    t.tls_hi = t.tls_lo + (tls_lo ? tls_size : 0);
    t.self_lo = reinterpret_cast<std::uintptr_t>(&tls);
    t.self_hi = t.self_lo + sizeof(ThreadState);
    if (t.mode & TRACK_COUNT) {
        t.segment.assign(nthreads, 0);
        t.occurrence.assign(nthreads, std::map<std::pair<TrackSite, int>, unsigned>());
    }
}

// The report of a tracked launch: one line per (site, space, kind), tab-separated:
// "site <pc offset> <line> <space> <kind> <requests> <units> <ideal> <bytes> <file>".
__attribute__((no_sanitize_thread)) static std::string track_report(const Tracker& t) {
    std::string out;
    char line[256];
    for (const auto& item : t.stats) {
        const TrackSite& site = std::get<0>(item.first);
        const TrackStats& s = item.second;
        snprintf(line, sizeof line, "site\t%llu\t%u\t%s\t%s\t%llu\t%llu\t%llu\t%llu\t",
                 static_cast<unsigned long long>(site.pc), site.line,
                 std::get<1>(item.first) == TRACK_GLOBAL ? "global" : "shared",
                 kKindNames[std::get<2>(item.first)], s.requests, s.units, s.ideal, s.bytes);
        out += line;
        out += site.file ? site.file : "-";
        out += "\n";
    }
    return out;
}

}  // namespace gpuconv_emu

// ---------------------------------------------------------------------------------------------
// The entry points -fsanitize=thread calls (signatures as GCC declares them as builtins)
// ---------------------------------------------------------------------------------------------
#define GPUCONV_EMU_TSAN extern "C" __attribute__((no_sanitize_thread, noinline, used))
#define GPUCONV_EMU_TSAN_PC \
    ::gpuconv_emu::TrackSite { reinterpret_cast<std::uintptr_t>(__builtin_return_address(0)), nullptr, 0 }

#define GPUCONV_EMU_TSAN_RW(N)                                                              \
    GPUCONV_EMU_TSAN void __tsan_read##N(void* p) {                                         \
        ::gpuconv_emu::track_access(p, N, ::gpuconv_emu::TK_READ, GPUCONV_EMU_TSAN_PC);      \
    }                                                                                       \
    GPUCONV_EMU_TSAN void __tsan_write##N(void* p) {                                        \
        ::gpuconv_emu::track_access(p, N, ::gpuconv_emu::TK_WRITE, GPUCONV_EMU_TSAN_PC);     \
    }                                                                                       \
    GPUCONV_EMU_TSAN void __tsan_unaligned_read##N(const void* p) {                         \
        ::gpuconv_emu::track_access(p, N, ::gpuconv_emu::TK_READ, GPUCONV_EMU_TSAN_PC);      \
    }                                                                                       \
    GPUCONV_EMU_TSAN void __tsan_unaligned_write##N(void* p) {                              \
        ::gpuconv_emu::track_access(p, N, ::gpuconv_emu::TK_WRITE, GPUCONV_EMU_TSAN_PC);     \
    }
GPUCONV_EMU_TSAN_RW(1)
GPUCONV_EMU_TSAN_RW(2)
GPUCONV_EMU_TSAN_RW(4)
GPUCONV_EMU_TSAN_RW(8)
GPUCONV_EMU_TSAN_RW(16)
GPUCONV_EMU_TSAN void __tsan_read_range(void* p, std::size_t n) {
    ::gpuconv_emu::track_access(p, n, ::gpuconv_emu::TK_READ, GPUCONV_EMU_TSAN_PC);
}
GPUCONV_EMU_TSAN void __tsan_write_range(void* p, std::size_t n) {
    ::gpuconv_emu::track_access(p, n, ::gpuconv_emu::TK_WRITE, GPUCONV_EMU_TSAN_PC);
}
GPUCONV_EMU_TSAN void __tsan_init() {}
GPUCONV_EMU_TSAN void __tsan_func_entry(void*) {}
GPUCONV_EMU_TSAN void __tsan_func_exit() {}
GPUCONV_EMU_TSAN void __tsan_vptr_update(void*, void*) {}
GPUCONV_EMU_TSAN void __tsan_vptr_read(void*) {}
GPUCONV_EMU_TSAN void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
GPUCONV_EMU_TSAN void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

// Atomics: done for real (sequentially consistent), and recorded as atomic accesses.
#define GPUCONV_EMU_TSAN_ATOMIC(N, T)                                                          \
    GPUCONV_EMU_TSAN T __tsan_atomic##N##_load(const volatile void* a, int) {                  \
        ::gpuconv_emu::track_access(a, sizeof(T), ::gpuconv_emu::TK_ATOMIC, GPUCONV_EMU_TSAN_PC); \
        return __atomic_load_n(static_cast<const volatile T*>(a), __ATOMIC_SEQ_CST);           \
    }                                                                                          \
    GPUCONV_EMU_TSAN void __tsan_atomic##N##_store(volatile void* a, T v, int) {               \
        ::gpuconv_emu::track_access(a, sizeof(T), ::gpuconv_emu::TK_ATOMIC, GPUCONV_EMU_TSAN_PC); \
        __atomic_store_n(static_cast<volatile T*>(a), v, __ATOMIC_SEQ_CST);                    \
    }                                                                                          \
    GPUCONV_EMU_TSAN_ATOMIC_RMW(N, T, exchange, __atomic_exchange_n)                           \
    GPUCONV_EMU_TSAN_ATOMIC_RMW(N, T, fetch_add, __atomic_fetch_add)                           \
    GPUCONV_EMU_TSAN_ATOMIC_RMW(N, T, fetch_sub, __atomic_fetch_sub)                           \
    GPUCONV_EMU_TSAN_ATOMIC_RMW(N, T, fetch_and, __atomic_fetch_and)                           \
    GPUCONV_EMU_TSAN_ATOMIC_RMW(N, T, fetch_or, __atomic_fetch_or)                             \
    GPUCONV_EMU_TSAN_ATOMIC_RMW(N, T, fetch_xor, __atomic_fetch_xor)                           \
    GPUCONV_EMU_TSAN_ATOMIC_RMW(N, T, fetch_nand, __atomic_fetch_nand)                         \
    GPUCONV_EMU_TSAN bool __tsan_atomic##N##_compare_exchange_strong(volatile void* a,         \
                                                                      void* expected, T v,     \
                                                                      int, int) {              \
        ::gpuconv_emu::track_access(a, sizeof(T), ::gpuconv_emu::TK_ATOMIC, GPUCONV_EMU_TSAN_PC); \
        return __atomic_compare_exchange_n(static_cast<volatile T*>(a),                        \
                                           static_cast<T*>(expected), v, false,                \
                                           __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                \
    }                                                                                          \
    GPUCONV_EMU_TSAN bool __tsan_atomic##N##_compare_exchange_weak(volatile void* a,           \
                                                                    void* expected, T v, int,  \
                                                                    int) {                     \
        ::gpuconv_emu::track_access(a, sizeof(T), ::gpuconv_emu::TK_ATOMIC, GPUCONV_EMU_TSAN_PC); \
        return __atomic_compare_exchange_n(static_cast<volatile T*>(a),                        \
                                           static_cast<T*>(expected), v, true,                 \
                                           __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                \
    }                                                                                          \
    GPUCONV_EMU_TSAN T __tsan_atomic##N##_compare_exchange_val(volatile void* a, T expected,   \
                                                                T v, int, int) {               \
        ::gpuconv_emu::track_access(a, sizeof(T), ::gpuconv_emu::TK_ATOMIC, GPUCONV_EMU_TSAN_PC); \
        __atomic_compare_exchange_n(static_cast<volatile T*>(a), &expected, v, false,          \
                                    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                       \
        return expected;                                                                       \
    }
#define GPUCONV_EMU_TSAN_ATOMIC_RMW(N, T, OP, BUILTIN)                                         \
    GPUCONV_EMU_TSAN T __tsan_atomic##N##_##OP(volatile void* a, T v, int) {                   \
        ::gpuconv_emu::track_access(a, sizeof(T), ::gpuconv_emu::TK_ATOMIC, GPUCONV_EMU_TSAN_PC); \
        return BUILTIN(static_cast<volatile T*>(a), v, __ATOMIC_SEQ_CST);                      \
    }
GPUCONV_EMU_TSAN_ATOMIC(8, unsigned char)
GPUCONV_EMU_TSAN_ATOMIC(16, unsigned short)
GPUCONV_EMU_TSAN_ATOMIC(32, unsigned int)
GPUCONV_EMU_TSAN_ATOMIC(64, unsigned long)

#endif  // GPUCONV_EMU_TRACK_H
