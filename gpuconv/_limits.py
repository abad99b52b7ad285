"""Launch limits and default launch sizes: the one place each is defined.

CUDA's own limits (those of every GPU since compute capability 3.0), which
:func:`gpuconv._launch.check_config` enforces, and the defaults that gpuconv's launch code
shares: the threads per block and grid cap of its grid-stride kernels and the workspace bound
of its chunked algorithms. Per-kernel tuning constants live beside their kernels (in the
``.cu`` file, read with :func:`gpuconv._kernels.source_define`, or in the device module that
plans the launch).
"""

from __future__ import annotations

#: Threads per block, at most.
MAX_THREADS_PER_BLOCK = 1024
#: Threads per block, at most, in x, y and z.
MAX_BLOCK_DIM = (1024, 1024, 64)
#: Blocks per grid, at most, in x, y and z.
MAX_GRID_DIM = (2**31 - 1, 65535, 65535)
MAX_GRID_X, MAX_GRID_Y, MAX_GRID_Z = MAX_GRID_DIM
#: Dynamic shared memory a launch may use without opting in (cudaFuncSetAttribute).
MAX_DYNAMIC_SHARED_BYTES = 48 * 1024

#: Threads per block of gpuconv's one-thread-per-element (grid-stride) kernels.
THREADS = 256
#: Grid cap of the block- and grid-stride loops: the kernels loop over the rest.
MAX_BLOCKS = 65535
#: Upper bound, in bytes, of one temporary buffer of a chunked algorithm (column buffers,
#: partial-sum workspaces), on every backend.
WORKSPACE_BYTES = 64 * 2**20
