"""Out-of-core benchmark of gpuconv.dask: a Zarr volume larger than the workers' memory.

Writes a random float32 volume ``(1, C, D, H, W)`` to Zarr on disk, convolves it with a
``C -> C`` 3x3x3 ``gpuconv.dask.conv3d`` (padding 'same') on a ``distributed.LocalCluster``
whose workers each get ``--memory-limit``, and writes the result back to Zarr. Run once with 1
worker and once with 2 (one thread each, BLAS single-threaded), it reports per run: wall time,
throughput (output voxels/s, input GB/s, GFLOP/s), the peak RSS of every worker process
(``getrusage`` ``ru_maxrss``, read from each fresh worker after the run), and checks a slab of
the output against ``gpuconv.conv3d`` on the slab's input (with its halo) in memory.

The peer, on the single-channel case: ``dask_image.ndfilters.convolve`` (scipy.ndimage per
chunk, ``map_overlap`` halo) against ``gpuconv.dask.conv3d`` 1 -> 1, same volume, same
cluster, same zero boundary; the two results are compared on a slab.

Usage (the full size: 8 GiB of input; 2 workers of 1.5 GiB)::

    python benchmarks/dask_bench.py --shape 512 512 512 --channels 16 \\
        --memory-limit 1.5GiB --store /tmp/gpuconv-dask-bench --json out.json

Needs the ``dask`` extra (dask, distributed, zarr, dask-image) and psutil (from distributed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time

# One BLAS thread per worker process (set before NumPy loads in the workers, which inherit it):
# the scaling from 1 to 2 workers is then the scaling from 1 to 2 cores.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402


def _peak_rss_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _make_input(path, shape, chunks, client, seed=0):
    import dask.array as da
    import zarr

    # Uniform [-1, 1) float32 straight from the Generator: cheap to make, incompressible.
    x = da.random.default_rng(seed).random(size=shape, chunks=chunks, dtype=np.float32)
    x = 2 * x - 1
    z = zarr.create_array(path, shape=shape, chunks=chunks, dtype="float32",
                          compressors=None, overwrite=True)
    da.store(x, z, lock=False, compute=True)
    return z


def _cluster(workers, memory_limit):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           memory_limit=memory_limit, dashboard_address=None)
    return cluster, Client(cluster)


def _run(label, build, in_path, out_path, out_shape, out_chunks, workers, memory_limit, flops,
         in_bytes):
    """One timed run on a fresh cluster: build(client, x) -> lazy result, stored to Zarr."""
    import dask.array as da
    import zarr

    cluster, client = _cluster(workers, memory_limit)
    try:
        x = da.from_zarr(in_path)
        y = build(x)
        z = zarr.create_array(out_path, shape=out_shape, chunks=out_chunks, dtype="float32",
                              compressors=None, overwrite=True)
        start = time.perf_counter()
        da.store(y, z, lock=False, compute=True)
        wall = time.perf_counter() - start
        peaks = sorted(client.run(_peak_rss_mib).values())
    finally:
        client.close()
        cluster.close()
    voxels = int(np.prod(out_shape[2:] if len(out_shape) == 5 else out_shape))
    row = dict(label=label, workers=workers, wall_s=round(wall, 2),
               mvoxel_per_s=round(voxels / wall / 1e6, 3),
               input_gb_per_s=round(in_bytes / wall / 1e9, 3),
               gflop_per_s=round(flops / wall / 1e9, 2),
               peak_rss_mib_per_worker=[round(p) for p in peaks],
               tasks=y.npartitions)
    print(json.dumps(row), flush=True)
    return row


def _check_slab(in_path, out_path, weight, depth, flip_kernel=False):
    """Recompute output planes [d0, d0 + depth) in memory and compare with the stored ones."""
    import zarr

    import gpuconv

    xin = zarr.open_array(in_path, mode="r")
    yout = zarr.open_array(out_path, mode="r")
    five = xin.ndim == 5
    d = xin.shape[-3]
    d0 = d // 2 - depth // 2
    lo, hi = max(d0 - 1, 0), min(d0 + depth + 1, d)
    xs = np.asarray(xin[..., lo:hi, :, :])
    if not five:
        xs = xs[None, None]
    pad = ((1, 1) if lo == d0 - 1 and hi == d0 + depth + 1 else None)
    assert pad is not None
    w = weight[:, :, ::-1, ::-1, ::-1] if flip_kernel else weight
    ref = gpuconv.conv3d(xs, np.ascontiguousarray(w), padding=(0, 1, 1))
    got = np.asarray(yout[..., d0:d0 + depth, :, :])
    if not five:
        got = got[None, None]
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 512],
                        metavar=("D", "H", "W"))
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--chunk", type=int, nargs=3, default=[64, 64, 128])
    parser.add_argument("--peer-shape", type=int, nargs=3, default=None,
                        help="single-channel volume for the dask-image comparison "
                             "(default: --shape)")
    parser.add_argument("--peer-chunk", type=int, nargs=3, default=[128, 128, 256])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--memory-limit", default="1.5GiB")
    parser.add_argument("--store", default="/tmp/gpuconv-dask-bench")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the Zarr stores")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    import dask
    import distributed

    import gpuconv.dask as gd

    c = args.channels
    shape = (1, c, *args.shape)
    chunks = (1, c, *args.chunk)
    os.makedirs(args.store, exist_ok=True)
    in_path = os.path.join(args.store, "x.zarr")
    out_path = os.path.join(args.store, "y.zarr")
    in_bytes = int(np.prod(shape)) * 4
    rng = np.random.default_rng(1)
    weight = (rng.standard_normal((c, c, 3, 3, 3)) / np.sqrt(27 * c)).astype(np.float32)
    flops = 2 * c * c * 27 * int(np.prod(args.shape))

    results = dict(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=f"{platform.node()} {os.cpu_count()} CPUs, {platform.processor()}",
        load_average_before=os.getloadavg(),
        dask=dask.__version__, distributed=distributed.__version__,
        input=dict(shape=shape, chunks=chunks, gib=round(in_bytes / 2**30, 2)),
        memory_limit=args.memory_limit, runs=[],
    )
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}), flush=True)

    t0 = time.perf_counter()
    cluster, client = _cluster(max(args.workers), "8GiB")
    try:
        _make_input(in_path, shape, chunks, client)
        results["input_write_s"] = round(time.perf_counter() - t0, 1)
    finally:
        client.close()
        cluster.close()

    def conv(x):
        return gd.conv3d(x, weight, padding="same")

    for workers in args.workers:
        row = _run(f"gpuconv.dask.conv3d {c}->{c} 3x3x3", conv, in_path, out_path, shape,
                   chunks, workers, args.memory_limit, flops, in_bytes)
        results["runs"].append(row)
    results["check_rel_err"] = _check_slab(in_path, out_path, weight, 4)
    print("slab check, max |err| / max |ref|:", results["check_rel_err"], flush=True)

    if not args.skip_peer:
        import dask_image.ndfilters as ndf

        pshape = tuple(args.peer_shape or args.shape)
        pchunks = tuple(args.peer_chunk)
        p_in = os.path.join(args.store, "x1.zarr")
        p_out = os.path.join(args.store, "y1.zarr")
        cluster, client = _cluster(max(args.workers), "8GiB")
        try:
            _make_input(p_in, pshape, pchunks, client, seed=2)
        finally:
            client.close()
            cluster.close()
        k = weight[:1, :1]
        p_bytes = int(np.prod(pshape)) * 4
        p_flops = 2 * 27 * int(np.prod(pshape))
        results["peer_input"] = dict(shape=pshape, chunks=pchunks,
                                     gib=round(p_bytes / 2**30, 2))

        def ours(x):
            return gd.conv3d(x[None, None], k, padding="same")[0, 0]

        def theirs(x):
            # ndimage.convolve flips the kernel; pass the flipped one so both compute the
            # same cross-correlation; mode='constant' is zero padding (gpuconv's 'zeros').
            return ndf.convolve(x, np.ascontiguousarray(k[0, 0, ::-1, ::-1, ::-1]),
                                mode="constant", cval=0.0)

        workers = max(args.workers)
        for label, build in (("gpuconv.dask.conv3d 1->1 3x3x3", ours),
                             ("dask_image.ndfilters.convolve 3x3x3", theirs)):
            row = _run(label, build, p_in, p_out, pshape, pchunks, workers,
                       args.memory_limit, p_flops, p_bytes)
            row["check_rel_err"] = _check_slab(p_in, p_out, k, 4)
            print("slab check:", row["check_rel_err"], flush=True)
            results["runs"].append(row)

    results["load_average_after"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if not args.keep:
        shutil.rmtree(args.store, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
