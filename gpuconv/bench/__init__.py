"""``python -m gpuconv bench``: time gpuconv against its peers, with a roofline.

Each named *workload* (a shape of one operation, listed by ``--list``) is run by gpuconv on
one backend and, side by side in the same process, by every peer that is installed:
PyTorch (``torch.nn.functional``, cuDNN on a GPU), ``torchvision.ops.deform_conv2d``,
``numpy.convolve``, ``scipy.signal.fftconvolve`` and, on a GPU, ``cupyx.scipy.signal``
and ``cupyx.scipy.ndimage``. A peer that is not installed, or that fails on a workload,
shows ``-`` and gets a note; none is required.

Timing
------
* CPU: ``time.perf_counter`` around calls. GPU: ``cupy.cuda.Event`` pairs on the null
  stream (which orders PyTorch's default stream too), synchronised after each sample.
* gpuconv, its peers and the two ceilings (below) run in the same process, *interleaved*:
  each warms up, then the ``--repeat`` samples go round-robin, one sample of each per round
  (the order rotating), each after a pause (``SETTLE_S``, so the previous one's spinning
  BLAS/OpenMP threads have parked). Sample ``r`` uses input set ``r % COPIES`` (rotated
  inputs, so caches don't flatter). A sample repeats the call enough times to last
  ``MIN_SAMPLE_S``. The table reports the median sample per call, and the spread.
* The ceilings are timed beside every workload, in the same rounds: a large matrix product
  (FLOP/s; float32, or the workload's compute dtype) and a large copy (bytes read +
  written per second). A burst of load lands on the workload and its ceilings alike.

Reliability
-----------
Every timing keeps its samples: min/median/max and ``spread = (max - min) / median``. The
load is measured twice: the 1-minute load average before and after the run, and, per
workload, the CPU time other processes used while it was timed (``/proc/stat`` minus this
process's own: :class:`LoadProbe`). :func:`assess` flags a row unreliable when a spread
exceeds :data:`SPREAD_LIMIT`, other processes used more than :data:`LOAD_LIMIT` of the
cores, or the load average was too high (:data:`LOADAVG_LIMIT`); the table then prints
``~`` and two digits and the ratio's range instead of exact-looking figures. A roofline
above 100% is impossible, so it is flagged as a measurement error (``ERR``), never
reported as a result. The JSON records which BLAS library and kernel ran
(:func:`blas_info`), and the run warns when ``OPENBLAS_CORETYPE`` pins an older kernel than
the CPU supports (:func:`openblas_kernel_warning`).

Roofline
--------
For each workload ``F`` counts FLOPs (a multiply-add is 2 FLOPs; the formulas are in
:func:`flops`) and ``B`` bytes (every input, weight and output array once, in the workload
dtype: :func:`traffic_bytes`). With the ceilings ``P`` (FLOP/s) and ``W`` (bytes/s) --
the fastest of the samples timed beside this workload, a rate the machine demonstrably
reached -- the roofline time is ``max(F / P, B / W)`` and::

    % of roofline = 100 * (F / t) / min(P, (F / B) * W) = 100 * max(F / P, B / W) / t

``ratio`` is gpuconv's median time divided by the fastest peer's (below 1: gpuconv is
faster); ``ratio_min`` and ``ratio_max`` bound it from the samples' extremes.

Adding workloads
----------------
:data:`WORKLOADS` maps a name to a :class:`Workload` of a *kind*; :data:`KINDS` maps each
kind to how its inputs are made, how gpuconv and each peer run it, and its FLOP and byte
counts (:func:`register_kind`, :func:`register_workload`).

Backward workloads (kind ``"backward"``, named ``<forward>_backward``, one for each name in
:data:`BACKWARD_OF`, same sizes) time the gradients of every array input of the forward
(``x`` and the weight; also the offset and mask for deform) for one random ``grad_output``:
gpuconv's :mod:`gpuconv.grad` functions against ``torch.autograd.grad`` of PyTorch's (or
torchvision's) forward output, built once before the timing with ``retain_graph=True``, so
both sides time the backward pass alone. Their results (tuples of gradients) are compared
pairwise; ``rel_diff`` is the largest of the per-gradient differences.

Layout
------
``workloads`` (the registry, FLOP and byte counts, peers), ``timing`` (timers, interleaved
sampling, ceilings, load probe), ``machine`` (CPU, BLAS kernel), ``report`` (flags, table,
chart), ``runner`` (one workload's run), ``cli`` (the command). Everything public is
re-exported here: ``from gpuconv import bench; bench.main([...])``.
"""

from __future__ import annotations

from .cli import DEFAULT_REPEAT, JSON_SCHEMA, SIZE_SETS, main
from .machine import (OPENBLAS_KERNEL_LEVEL, blas_info, cpu_kernel_level, describe_blas,
                      machine_info, openblas_kernel_warning)
from .report import (LOAD_LIMIT, LOADAVG_END_LIMIT, LOADAVG_LIMIT, SPREAD_LIMIT, TABLE_LEGEND,
                     THRESHOLDS, assess, flag_notes, format_table, plot_records, write_plot)
from .runner import run_workload
from .timing import (COPIES, MIN_SAMPLE_S, QUICK_SETTLE_S, SETTLE_S, Ceilings, CpuTimer,
                     CudaTimer, LoadProbe, measure_peaks, roofline_pct, spread_of,
                     time_side_by_side)
from .workloads import (BACKWARD_OF, KINDS, WORKLOADS, Kind, Workload, flops, register_kind,
                        register_workload, traffic_bytes)

__all__ = [
    "BACKWARD_OF", "COPIES", "DEFAULT_REPEAT", "JSON_SCHEMA", "KINDS", "LOADAVG_END_LIMIT",
    "LOADAVG_LIMIT", "LOAD_LIMIT", "MIN_SAMPLE_S", "OPENBLAS_KERNEL_LEVEL", "QUICK_SETTLE_S",
    "SETTLE_S", "SIZE_SETS", "SPREAD_LIMIT", "TABLE_LEGEND", "THRESHOLDS", "WORKLOADS",
    "Ceilings", "CpuTimer", "CudaTimer", "Kind", "LoadProbe", "Workload", "assess",
    "blas_info", "cpu_kernel_level", "describe_blas", "flag_notes", "flops", "format_table",
    "machine_info", "main", "measure_peaks", "openblas_kernel_warning", "plot_records",
    "register_kind", "register_workload", "roofline_pct", "run_workload", "spread_of",
    "time_side_by_side", "traffic_bytes", "write_plot",
]
