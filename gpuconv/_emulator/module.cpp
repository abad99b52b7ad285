// module.cpp -- the one translation unit the emulator compiles per kernel module.
//
// g++ is invoked on THIS file with (see _build.py)
//   -include <emulator dir>/cuda_shim.h   the CUDA shim, then
//   -include /abs/path/kernel.cu          the kernel source, by its real path (so diagnostics name
//                                         the .cu file and line; being a command-line argument,
//                                         any legal path works, quotes and newlines included)
//   -iquote <private build dir>           holding gpuconv_emu_entries.inc: one
//                                         GPUCONV_EMU_ENTRY(<name expression>) per line
// Nothing here is generated: the entry list is data, expanded by the macro below.
#include "cuda_shim.h"  // (already included by -include; kept so this file reads on its own)

#include "runtime.h"

namespace gpuconv_emu {

// Deduce the kernel's signature from its address, record the parameter type codes and a
// trampoline that unpacks `void** argv` (one pointer to each argument's bytes, as in
// cudaLaunchKernel) into the call.
template <class... Args, std::size_t... I>
inline void invoke_unpacked(void (*fn)(Args...), void** argv, std::index_sequence<I...>) {
    fn(*static_cast<typename std::remove_reference<Args>::type*>(argv[I])...);
}

template <class... Args>
inline void invoke_entry(void (*generic)(), void** argv) {
    auto fn = reinterpret_cast<void (*)(Args...)>(generic);
    invoke_unpacked(fn, argv, std::index_sequence_for<Args...>{});
}

// alignof the element a pointer parameter points to (0 for scalars): the argument checker
// rejects arrays whose address the kernel's loads could not use (e.g. a complex<double> that is
// alignas(16) at an address numpy only aligns to 8).
template <class T>
struct param_align {
    static std::size_t get() { return 0; }
};
template <class T>
struct param_align<T*> {
    static std::size_t get() { return alignof(typename std::remove_cv<T>::type); }
};

template <class T>
struct param_code {
    static std::string get() {
        static_assert(!std::is_reference<T>::value, "kernel parameters cannot be references");
        const char* code = type_code<typename std::remove_cv<T>::type>::value;
        return code ? std::string(code) : std::string("unsupported:") + std::to_string(sizeof(T));
    }
};
template <class T>
struct param_code<T*> {
    static std::string get() {
        typedef typename std::remove_cv<T>::type E;
        const char* code = type_code<E>::value;
        const std::string elem =
            code ? std::string(code) : std::string("unsupported:") + std::to_string(sizeof(E));
        return std::string(std::is_const<T>::value ? "const ptr:" : "ptr:") + elem;
    }
};

template <class... Args>
inline Entry make_entry(const char* name, void (*fn)(Args...)) {
    Entry e;
    e.name = name;
    e.fn = reinterpret_cast<void (*)()>(fn);
    e.invoke = &invoke_entry<Args...>;
    e.nargs = static_cast<int>(sizeof...(Args));
    std::string sig;
    const std::string codes[] = {param_code<Args>::get()..., std::string()};
    for (std::size_t i = 0; i < sizeof...(Args); ++i) {
        if (i) sig += ",";
        sig += codes[i];
    }
    e.signature = sig;
    const std::size_t aligns[] = {param_align<Args>::get()..., 0};
    for (std::size_t i = 0; i < sizeof...(Args); ++i) {
        if (i) e.alignments += ",";
        e.alignments += std::to_string(aligns[i]);
    }
    return e;
}

#define GPUCONV_EMU_ENTRY(...) ::gpuconv_emu::make_entry(#__VA_ARGS__, &__VA_ARGS__),

const std::vector<Entry>& entries() {
    static const std::vector<Entry> table = {
#include "gpuconv_emu_entries.inc"
    };
    return table;
}

}  // namespace gpuconv_emu
