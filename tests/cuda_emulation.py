"""Run the fused kernels' CUDA C source on the CPU, to test it on machines without a GPU.

Test-only. The exact source that CuPy would compile (tinygrad_tx.kernels.source) is compiled by g++
with a small shim: every CUDA thread of a block is a coroutine (ucontext) on one OS thread, switched
at __syncthreads and at warp shuffles, and blocks run one after another. This checks the kernels'
indexing, reductions and arithmetic, not GPU-only behaviour (memory model, occupancy, speed).

`FakeCupy(...)` stands in for the cupy module inside tinygrad_tx.kernels: NumPy arrays play device
arrays and `RawKernel` returns an emulated kernel.
"""
import ctypes
import os
import re
import shutil
import subprocess

import numpy as np

SHIM = r"""
#include <cmath>
#include <cstring>
#include <algorithm>
#include <vector>
#include <ucontext.h>
using std::exp; using std::log; using std::sqrt; using std::min; using std::max;

// Every CUDA thread of a block is a coroutine (ucontext) on one OS thread, switched at barriers.
struct dim3_ { unsigned int x, y, z; };
static dim3_ threadIdx, blockIdx, blockDim, gridDim;
typedef void (*entry_t)(void**);
static entry_t emu_entry;
static void** emu_argv;
static ucontext_t emu_scheduler;
static std::vector<ucontext_t> emu_threads;
static std::vector<char> emu_finished;
static unsigned emu_current;

struct emu_barrier { unsigned parties, count, generation; };
static emu_barrier emu_block_barrier, emu_warp_barriers[32];
static void emu_wait(emu_barrier& b) {
    const unsigned generation = b.generation;
    if (++b.count == b.parties) { b.count = 0; ++b.generation; return; }
    while (b.generation == generation) swapcontext(&emu_threads[emu_current], &emu_scheduler);
}

#define __global__
#define __device__
#define __forceinline__
#define __shared__ static
static void __syncthreads() { emu_wait(emu_block_barrier); }
static double emu_shuffle[1024];
template <typename V> static V __shfl_down_sync(unsigned, V v, int offset) {
    const unsigned lane = threadIdx.x % 32;
    emu_shuffle[threadIdx.x] = (double)v;
    emu_wait(emu_warp_barriers[threadIdx.x / 32]);
    V out = lane + offset < 32 ? (V)emu_shuffle[threadIdx.x + offset] : v;
    emu_wait(emu_warp_barriers[threadIdx.x / 32]);
    return out;
}
static float __int_as_float(unsigned int i) { float f; std::memcpy(&f, &i, 4); return f; }
static double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }

static void emu_thread_main() {
    emu_entry(emu_argv);
    emu_finished[emu_current] = 1;
}

extern "C" int emu_launch(entry_t entry, unsigned gx, unsigned gy, unsigned bx, void** argv) {
    if (bx % 32 || bx > 1024) return 1;
    const size_t stack_size = 64 * 1024;
    std::vector<char> stacks(stack_size * bx);
    emu_entry = entry;
    emu_argv = argv;
    blockDim = {bx, 1, 1};
    gridDim = {gx, gy, 1};
    emu_threads.assign(bx, ucontext_t());
    for (unsigned by_ = 0; by_ < gy; ++by_)
        for (unsigned bx_ = 0; bx_ < gx; ++bx_) {
            blockIdx = {bx_, by_, 0};
            emu_block_barrier = {bx, 0, 0};
            for (unsigned w = 0; w < bx / 32; ++w) emu_warp_barriers[w] = {32, 0, 0};
            emu_finished.assign(bx, 0);
            for (unsigned t = 0; t < bx; ++t) {
                getcontext(&emu_threads[t]);
                emu_threads[t].uc_stack.ss_sp = &stacks[t * stack_size];
                emu_threads[t].uc_stack.ss_size = stack_size;
                emu_threads[t].uc_link = &emu_scheduler;
                makecontext(&emu_threads[t], emu_thread_main, 0);
            }
            for (unsigned live = bx; live > 0;)
                for (unsigned t = 0; t < bx; ++t) {
                    if (emu_finished[t]) continue;
                    emu_current = t;
                    threadIdx = {t, 0, 0};
                    swapcontext(&emu_scheduler, &emu_threads[t]);
                    live -= emu_finished[t];
                }
        }
    return 0;
}
"""

_SIGNATURE = re.compile(r'extern "C" __global__ void (\w+)\((.*?)\)\s*\{', re.DOTALL)


def _parameters(name, code):
    """The C types of kernel `name`'s parameters, e.g. ['const T*', 'T*', 'const long long']."""
    (params,) = [p for n, p in _SIGNATURE.findall(code) if n == name]
    return [re.match(r"\s*(.*?)\s*\w+\s*$", param, re.DOTALL).group(1) for param in params.split(",")]


def _entry_point(name, code):
    """A C++ function launch_<name>(void** argv) that calls the kernel with CUDA's kernelParams convention."""
    casts = [f"*({ctype}*)argv[{i}]" for i, ctype in enumerate(_parameters(name, code))]
    return f'extern "C" void launch_{name}(void** argv) {{ {name}({", ".join(casts)}); }}\n'


def build(groups, build_dir):
    """Compile each group of (kernel name, source) pairs into one library, g++ runs in parallel.

    A group is named by the dtype of T ('float32' or 'float64') and holds kernels of distinct names;
    each source goes into a namespace of its own, so their shared helpers (block_sum, ...) do not clash.
    Returns {group: {source: kernel}}.
    """
    jobs = {}
    for group, sources in groups.items():
        unit = SHIM + "".join(f"namespace k_{name} {{\n{code}\n{_entry_point(name, code)}}}\n" for name, code in sources)
        cpp, so = os.path.join(build_dir, f"{group}.cpp"), os.path.join(build_dir, f"{group}.so")
        with open(cpp, "w") as f:
            f.write(unit)
        jobs[group] = so, subprocess.Popen(["g++", "-std=c++17", "-O0", "-shared", "-fPIC", "-o", so, cpp],
                                           stderr=subprocess.PIPE, text=True)
    kernels = {}
    for group, (so, job) in jobs.items():
        _, err = job.communicate()
        if job.returncode:
            raise RuntimeError(f"g++ failed on the {group} kernels:\n{err}")
        lib = ctypes.CDLL(so)
        kernels[group] = {code: EmulatedKernel(lib, name, _parameters(name, code), np.dtype(group))
                          for name, code in groups[group]}
    return kernels


_DTYPES = {"long long": np.dtype("int64"), "int": np.dtype("int32"), "bool": np.dtype("bool"),
           "float": np.dtype("float32"), "double": np.dtype("float64")}
_C_TYPES = {np.dtype("int64"): ctypes.c_longlong, np.dtype("int32"): ctypes.c_int,
            np.dtype("float32"): ctypes.c_float, np.dtype("float64"): ctypes.c_double}


class EmulatedKernel:
    """One kernel of a built library, called as cupy.RawKernel is: kernel(grid, block, args).

    Unlike a real launch, each argument is checked against the kernel's declared parameter type (a
    float64 array for a `const T*` in the float32 build, an int32 for a `long long`, ...), since a
    mismatch would make the GPU read the wrong bytes silently.
    """

    def __init__(self, lib, name, parameters, T):
        self.lib, self.name, self.parameters, self.T = lib, name, parameters, T
        self.entry = ctypes.cast(getattr(lib, f"launch_{name}"), ctypes.c_void_p)

    def _expected(self, ctype):
        base = ctype.replace("const", "").replace("*", "").strip()
        return self.T if base == "T" else _DTYPES[base], ctype.endswith("*")

    def __call__(self, grid, block, args):
        if len(args) != len(self.parameters):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.parameters)} parameters")
        values = []
        for i, (a, ctype) in enumerate(zip(args, self.parameters)):
            dtype, is_pointer = self._expected(ctype)
            if is_pointer != isinstance(a, np.ndarray) or np.asarray(a).dtype != dtype:
                raise TypeError(f"{self.name}: argument {i} ({ctype}) got {type(a).__name__} of {np.asarray(a).dtype}")
            if is_pointer:
                if not a.flags.c_contiguous:
                    raise ValueError(f"{self.name}: argument {i} is not C-contiguous")
                values.append(ctypes.c_void_p(a.ctypes.data))
            else:
                values.append(_C_TYPES[dtype](a))
        argv = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        gx, gy = (tuple(grid) + (1,))[:2]
        if self.lib.emu_launch(self.entry, gx, gy, block[0], argv):
            raise ValueError(f"{self.name}: block size {block} is not a multiple of 32 up to 1024")


def available() -> bool:
    return shutil.which("g++") is not None


class FakeCupy:
    """The parts of the cupy module that tinygrad_tx.kernels uses: NumPy, plus emulated RawKernels."""

    def __init__(self, groups, build_dir):
        self._kernels = {}
        for by_source in build(groups, build_dir).values():
            self._kernels.update(by_source)

    def RawKernel(self, code, name):
        kernel = self._kernels.get(code)
        if kernel is None or kernel.name != name:
            raise KeyError(f"kernel {name} was not built from this source")
        return kernel

    def __getattr__(self, name):
        return getattr(np, name)
