"""PyTorch bridge: functions and ``nn.Module`` layers whose forward and backward run gpuconv.

Import it explicitly, ``import gpuconv.torch`` (``import gpuconv`` never imports PyTorch).

* CPU tensors are shared with NumPy without copies (``tensor.detach().numpy()`` in,
  ``torch.from_numpy`` out); gpuconv copies only inputs that are not C-contiguous.
  ``torch.channels_last``/``channels_last_3d`` tensors are accepted and give outputs and input
  gradients in the same format (docs/layouts.md says which paths copy them to NCHW).
  ``torch.bfloat16`` tensors, which ``Tensor.numpy()`` refuses, are shared the same way
  through their bits: ``t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)`` in and
  ``torch.from_numpy(a.view(numpy.int16)).view(torch.bfloat16)`` out, still without copies
  (this needs ml_dtypes, the ``bf16`` extra). They run on the NumPy and ``emulate``
  backends, computed in float32 and rounded once. bfloat16 CUDA tensors raise a TypeError
  that says so: the CUDA kernels have bfloat16 instantiations (checked on the emulator and
  with NVRTC), but the bfloat16 path through CuPy has not run on a GPU yet.
* CUDA tensors are shared with CuPy through DLPack (``cupy.from_dlpack``, ``torch.from_dlpack``,
  zero-copy), and gpuconv's kernels run on PyTorch's current CUDA stream of the tensors'
  device, so they are ordered with the surrounding PyTorch work. CuPy allocates the results
  from its own memory pool.
* Every operation is a ``torch.library`` custom op in the ``gpuconv`` namespace
  (``torch.ops.gpuconv.conv``, ``...conv_input``, ``...conv_weight``, and the same for
  ``conv_transpose``, ``depthwise_conv``, ``separable_conv`` and ``deform_conv2d``), with a
  fake (meta) implementation, a registered backward and a vmap rule. So
  ``torch.compile(fullgraph=True)`` traces gpuconv layers without graph breaks, layers on
  ``device="meta"`` give output shapes without computing, and ``torch.func.vmap`` (over inputs,
  offsets or weights) works, and so do ``torch.func.grad``/``vjp``/``jacrev`` and per-sample
  gradients (``vmap(grad(...))``): PyTorch 2.13's ``register_autograd`` ops fail under those
  (pytorch/pytorch#170834), so while torch.func transforms are active the functions call the
  ops through an equivalent ``torch.autograd.Function``. The first call of an op imports
  ``torch._dynamo`` (PyTorch does so for custom ops): seconds, once. The ops take resolved
  arguments (explicit ``(lo, hi)`` pad pairs); call them through the functions below, which
  validate and resolve them (``torch.func.grad`` over ``torch.ops.gpuconv.*`` called directly
  hits the PyTorch limitation; ``vmap`` over them works).
* Gradients come from :mod:`gpuconv.grad`, and the backward of every op is itself made of
  differentiable gpuconv ops (the gradients of a convolution are convolutions), so double
  backward works (``torch.autograd.grad(..., create_graph=True)``, gradient penalties,
  ``gradgradcheck``) for ``conv``, ``conv_transpose``, ``depthwise_conv`` and
  ``separable_conv``. ``deform_conv2d`` is differentiable once: differentiating its gradients
  raises a ``RuntimeError`` that says so. Under ``torch.use_deterministic_algorithms(True)``
  the weight gradients are requested with ``deterministic=True``.
* Tensors must share one dtype, as in ``torch.nn.functional``: a float64 input to a float32
  layer raises :class:`DtypeMismatchError` (a ``RuntimeError``, as PyTorch raises, and a
  ``TypeError``) with PyTorch's wording.

What this offers beyond ``torch.nn``/torchvision: every ``padding_mode`` in 1-D, 2-D and 3-D,
``padding='same'`` with any stride (``ceil(size / stride)`` outputs), ``padding='same'`` for
transposed convolutions (``size * stride`` outputs), asymmetric ``((lo, hi), ...)`` padding,
depthwise and depthwise-separable layers, and float16/bfloat16/float32/float64 on the CPU
(bfloat16 ``deform_conv2d`` included, which torchvision does not implement).

Examples
--------
>>> import torch
>>> import gpuconv.torch as gt
>>> layer = gt.Conv2d(3, 8, 3, stride=2, padding="same", padding_mode="reflect")
>>> layer(torch.randn(2, 3, 9, 9)).shape
torch.Size([2, 8, 5, 5])
"""

# No ``from __future__ import annotations``: torch.library reads the custom ops' schemas from
# their annotations.

import contextlib
import math
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch._prims_common import suggest_memory_format

from . import _api, _dtypes, _shapes, _validate
from . import grad as _grad

__all__ = [
    "Conv1d", "Conv2d", "Conv3d",
    "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
    "DeformConv2d",
    "DepthwiseConv1d", "DepthwiseConv2d", "DepthwiseConv3d",
    "DtypeMismatchError",
    "SeparableConv1d", "SeparableConv2d", "SeparableConv3d",
    "conv", "conv_transpose", "deform_conv2d", "depthwise_conv", "separable_conv",
]

_DTYPES = (torch.float16, torch.float32, torch.float64, torch.bfloat16)
# PyTorch's names for the dtypes in its messages: (C++ type, scalar type).
_TORCH_NAMES = {torch.float16: ("c10::Half", "Half"), torch.float32: ("float", "Float"),
                torch.float64: ("double", "Double"), torch.bfloat16: ("c10::BFloat16", "BFloat16")}


class DtypeMismatchError(RuntimeError, TypeError):
    """Tensors of different dtypes given to one operation.

    A ``RuntimeError``, as ``torch.nn.functional.conv2d`` raises in this case (with the same
    wording), and a ``TypeError``, as gpuconv raises for bad argument types.
    """


# ------------------------------------------------------------------ tensors


#: Tensor arguments that may be None.
_OPTIONAL_TENSORS = ("bias", "mask")


def _check_tensors(op: str, **named):
    """Check that the tensor arguments are float tensors on one device (only ``bias`` and
    ``mask`` may be None); return the device."""
    device = None
    for name, t in named.items():
        if t is None and name in _OPTIONAL_TENSORS:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise TypeError(
                f"{op}: {name} has dtype {t.dtype}; expected torch.float16, torch.float32 or "
                f"torch.float64 (or torch.bfloat16)"
            )
        if t.device.type not in ("cpu", "cuda", "meta"):
            raise TypeError(f"{op}: {name} is on device {t.device}; expected cpu or cuda")
        if t.dtype == torch.bfloat16:
            _check_bfloat16(op, name, t)
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(
                f"{op}: all tensors must be on one device, got {name} on {t.device} and "
                f"others on {device}"
            )
    return device


def _check_bfloat16(op: str, name: str, t):
    """A bfloat16 tensor needs ml_dtypes (ImportError naming the ``bf16`` extra) and, until
    the bfloat16 CUDA path has run on a GPU, the CPU (TypeError for CUDA tensors)."""
    if t.device.type == "meta":
        return
    _dtypes.require_bfloat16(op)
    if t.device.type == "cuda":
        raise TypeError(
            f"{op}: {name} is a torch.bfloat16 tensor on {t.device}; gpuconv's bfloat16 CUDA "
            f"path is not enabled yet (its kernels have not run on a GPU). Compute in float32 "
            f"on the GPU "
            f"(.float(), then .bfloat16() on the result), or pass CPU tensors"
        )


def _check_dtypes(op: str, x, bias, **others):
    """Raise :class:`DtypeMismatchError` unless every tensor has ``x``'s dtype; the bias is
    checked first and the messages are PyTorch's (``F.conv2d``)."""
    if bias is not None and bias.dtype != x.dtype:
        raise DtypeMismatchError(
            f"{op}: Input type ({_TORCH_NAMES[x.dtype][0]}) and bias type "
            f"({_TORCH_NAMES[bias.dtype][0]}) should be the same"
        )
    for name, t in others.items():
        if t is not None and t.dtype != x.dtype:
            raise DtypeMismatchError(
                f"{op}: expected scalar type {_TORCH_NAMES[x.dtype][1]} but found "
                f"{_TORCH_NAMES[t.dtype][1]} (input is {x.dtype}, {name} is {t.dtype}; "
                f"convert one with .to())"
            )


def _check_bias(op: str, bias, channels: int):
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(
            f"{op}: bias must have shape ({channels},) (one value per output channel), "
            f"got {tuple(bias.shape)}"
        )


def _batched(op: str, x, spatial_ndim: int):
    """``(x, unbatched)``: an unbatched input ``(C, *spatial)`` gets a batch axis of 1, as
    ``torch.nn.functional`` accepts it; other ranks are left for gpuconv's checks."""
    if x.dim() == spatial_ndim + 1:
        return x.unsqueeze(0), True
    return x, False


def _to_array(t):
    """A NumPy (CPU) or CuPy (CUDA) array sharing ``t``'s memory (None stays None)."""
    if t is None:
        return None
    t = t.detach()
    if t.device.type == "cuda":
        import cupy

        return cupy.from_dlpack(t)
    if t.dtype == torch.bfloat16:
        # Tensor.numpy() refuses bfloat16: share the bits (no copy), typed by ml_dtypes
        return t.view(torch.int16).numpy().view(_dtypes.require_bfloat16())
    return t.numpy()


def _to_tensor(a, dtype=None):
    """A tensor sharing the memory of gpuconv's result ``a`` (None stays None)."""
    if a is None:
        return None
    if isinstance(a, np.ndarray) and _dtypes.is_bfloat16(a.dtype):
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)  # the bits, no copy
    else:
        t = torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.from_dlpack(a)
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


@contextlib.contextmanager
def _device_scope(device):
    """For CUDA tensors: make CuPy use the tensors' device and PyTorch's current stream."""
    if device is None or device.type != "cuda":
        yield
        return
    import cupy

    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device.index), cupy.cuda.ExternalStream(
        stream.cuda_stream, device.index
    ):
        yield


def _memory_format(t):
    """PyTorch's memory format for ``t`` (``suggest_memory_format``): the rule
    :func:`gpuconv._layout.memory_format` follows, so a result's format is known before it
    is computed (the fake implementations) and gradients can be put in their input's."""
    return suggest_memory_format(t)


def _new_empty(ref, shape):
    """An empty tensor of ``shape`` like ``ref``, in ``ref``'s memory format (what gpuconv
    returns for it: channels-last results for channels-last inputs)."""
    fmt = _memory_format(ref) if len(shape) == ref.dim() else torch.contiguous_format
    return torch.empty(shape, dtype=ref.dtype, device=ref.device, memory_format=fmt)


def _like_input(grad, x):
    """``grad`` in ``x``'s memory format: an input gradient is channels-last when the input
    was (a copy only when autograd's grad_output was in another format)."""
    fmt = _memory_format(x)
    if grad is None or fmt == torch.contiguous_format:
        return grad
    return grad.contiguous(memory_format=fmt)


def _eager(dtype, compute, *tensors):
    """Run ``compute`` on the arrays of ``tensors`` (on their device and PyTorch's stream) and
    return its result(s) as tensors of ``dtype``. A custom op's output may not alias its
    inputs, so a NumPy result that might share memory with one is copied."""
    device = next(t.device for t in tensors if t is not None)
    with _device_scope(device):
        arrays = [_to_array(t) for t in tensors]
        result = compute(*arrays)

    def convert(a):
        if isinstance(a, np.ndarray) and any(
            isinstance(b, np.ndarray) and np.may_share_memory(a, b) for b in arrays
        ):
            a = a.copy(order="K")  # (keeps a channels-last layout)
        return _to_tensor(a, dtype)

    if isinstance(result, tuple):
        return tuple(convert(a) for a in result)
    return convert(result)


def _deterministic() -> bool:
    return torch.are_deterministic_algorithms_enabled()


def _pairs(flat):
    """``[lo0, hi0, lo1, hi1, ...]`` -> ``((lo0, hi0), (lo1, hi1), ...)``."""
    return tuple((int(flat[2 * i]), int(flat[2 * i + 1])) for i in range(len(flat) // 2))


def _flat_pads(lo, hi):
    return [v for pair in zip(lo, hi) for v in pair]


def _conv_out(in_size, kernel, stride, padding, dilation):
    """Output sizes of a convolution with flat ``(lo, hi)`` pads (``conv_out_size`` is plain
    integer arithmetic, so SymInts pass through)."""
    return [_shapes.conv_out_size(n, k, stride[i], padding[2 * i], padding[2 * i + 1],
                                  dilation[i])
            for i, (n, k) in enumerate(zip(in_size, kernel))]


def _transpose_out(in_size, kernel, stride, padding, output_padding, dilation):
    """Output sizes of a transposed convolution with flat ``(lo, hi)`` pads (plain integer
    arithmetic too)."""
    return [_shapes.conv_transpose_out_size(n, k, stride[i], padding[2 * i], padding[2 * i + 1],
                                            dilation[i], output_padding[i])
            for i, (n, k) in enumerate(zip(in_size, kernel))]


def _bias_grad(grad_output):
    return grad_output.sum(dim=[0, *range(2, grad_output.dim())])


# ------------------------------------------------------------------ vmap rules


def _vmap_rule(op, per_sample=None, shape_arg=None):
    """A ``torch.func.vmap`` rule for the custom op ``op``.

    ``per_sample`` lists the positions of the tensor arguments whose axis 0 is the batch
    ``N``; when only those are vmapped (and the op's output also has ``N`` first), the vmapped
    axis is folded into ``N``: one call on ``B * N`` samples (unvmapped per-sample tensors are
    expanded to ``B``; ``shape_arg``, the position of a shape argument, gets ``B * N``). Every
    other case (a vmapped weight, or a weight gradient, which sums over ``N``) runs the op once
    per vmapped index and stacks the results.
    """

    def rule(info, in_dims, *args):
        size = info.batch_size
        # in_dims has an entry per argument (for non-tensor arguments, None or a structure)
        batched = {i for i, (a, d) in enumerate(zip(args, in_dims))
                   if isinstance(a, Tensor) and d is not None}
        args = [a.movedim(in_dims[i], 0) if i in batched else a for i, a in enumerate(args)]
        if per_sample is not None and batched <= set(per_sample):
            folded = list(args)
            for i in per_sample:
                a = args[i]
                if a is None:
                    continue
                if i not in batched:
                    a = a.expand(size, *a.shape)
                folded[i] = a.reshape(size * a.shape[1], *a.shape[2:])
            if shape_arg is not None:
                shape = list(args[shape_arg])
                folded[shape_arg] = [size * shape[0], *shape[1:]]
            out = op(*folded)
            return out.reshape(size, out.shape[0] // size, *out.shape[1:]), 0
        results = [op(*[a[b] if i in batched else a for i, a in enumerate(args)])
                   for b in range(size)]
        if isinstance(results[0], tuple):
            return tuple(torch.stack(r) for r in zip(*results)), (0,) * len(results[0])
        return torch.stack(results), 0

    return rule


# ------------------------------------------------------- torch.func support

# PyTorch 2.13's register_autograd ops fail under torch.func.grad/vjp/jacrev ("it must
# override the setup_context staticmethod", pytorch/pytorch#170834). Under those transforms
# the ops are called through an equivalent autograd.Function instead, built from the same
# setup_context and backward (whose ops go through _call too, for nested transforms).
_FUNCTIONS = {}


def _register_autograd(op, backward, setup_context):
    """``op.register_autograd(backward, setup_context=...)``, and the autograd.Function that
    :func:`_call` uses under torch.func transforms (its vmap rule generated from the op's)."""
    op.register_autograd(backward, setup_context=setup_context)
    _FUNCTIONS[op] = type(f"_{op._name}_function", (torch.autograd.Function,), {
        "generate_vmap_rule": True,
        "forward": staticmethod(lambda *args: op(*args)),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward),
    })


def _call(op, *args):
    """``op(*args)``, through its autograd.Function while torch.func transforms are active."""
    if not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active():
        return _FUNCTIONS[op].apply(*args)
    return op(*args)


# --------------------------------------------------------------- custom ops

# Each weighted family (conv, conv_transpose, depthwise_conv) has three ops: the forward
# ``F(x, weight, bias, *geometry)``, its input gradient ``F_input(grad_output, weight,
# input_shape, *geometry)`` and its weight gradient ``F_weight(x, grad_output, weight_shape,
# *geometry, deterministic)``. F is bilinear in (x, weight), so F_input and F_weight are
# its adjoints, and the three are each other's gradients:
#   d F_input(g, w)  / dg = F(., w),          d F_input(g, w)  / dw = F_weight(., g)
#   d F_weight(x, g) / dx = F_input(g, .),    d F_weight(x, g) / dg = F(x, .)
# which is what the registered backwards below call, so every order of derivative works.


@torch.library.custom_op("gpuconv::conv", mutates_args=())
def _conv_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int],
             padding: Sequence[int], dilation: Sequence[int], groups: int,
             padding_mode: str) -> Tensor:
    return _eager(x.dtype, lambda x, w, b: _api.conv(
        x, w, b, stride=tuple(stride), padding=_pairs(padding), dilation=tuple(dilation),
        groups=groups, padding_mode=padding_mode), x, weight, bias)


@_conv_op.register_fake
def _(x, weight, bias, stride, padding, dilation, groups, padding_mode):
    out = _conv_out(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    return _new_empty(x, (x.shape[0], weight.shape[0], *out))


@torch.library.custom_op("gpuconv::conv_input", mutates_args=())
def _conv_input_op(grad_output: Tensor, weight: Tensor, input_shape: Sequence[int],
                   stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                   groups: int, padding_mode: str) -> Tensor:
    return _eager(grad_output.dtype, lambda g, w: _grad.conv_input(
        tuple(input_shape), w, g, stride=tuple(stride), padding=_pairs(padding),
        dilation=tuple(dilation), groups=groups, padding_mode=padding_mode), grad_output, weight)


@torch.library.custom_op("gpuconv::conv_weight", mutates_args=())
def _conv_weight_op(x: Tensor, grad_output: Tensor, weight_shape: Sequence[int],
                    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                    groups: int, padding_mode: str, deterministic: bool) -> Tensor:
    return _eager(x.dtype, lambda x, g: _grad.conv_weight(
        x, tuple(weight_shape), g, stride=tuple(stride), padding=_pairs(padding),
        dilation=tuple(dilation), groups=groups, padding_mode=padding_mode,
        deterministic=deterministic), x, grad_output)


@torch.library.custom_op("gpuconv::conv_transpose", mutates_args=())
def _conv_transpose_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int],
                       padding: Sequence[int], output_padding: Sequence[int],
                       dilation: Sequence[int], groups: int) -> Tensor:
    return _eager(x.dtype, lambda x, w, b: _api.conv_transpose(
        x, w, b, stride=tuple(stride), padding=_pairs(padding),
        output_padding=tuple(output_padding), dilation=tuple(dilation), groups=groups),
        x, weight, bias)


@_conv_transpose_op.register_fake
def _(x, weight, bias, stride, padding, output_padding, dilation, groups):
    out = _transpose_out(x.shape[2:], weight.shape[2:], stride, padding, output_padding,
                         dilation)
    return _new_empty(x, (x.shape[0], weight.shape[1] * groups, *out))


@torch.library.custom_op("gpuconv::conv_transpose_input", mutates_args=())
def _conv_transpose_input_op(grad_output: Tensor, weight: Tensor, input_shape: Sequence[int],
                             stride: Sequence[int], padding: Sequence[int],
                             output_padding: Sequence[int], dilation: Sequence[int],
                             groups: int) -> Tensor:
    return _eager(grad_output.dtype, lambda g, w: _grad.conv_transpose_input(
        tuple(input_shape), w, g, stride=tuple(stride), padding=_pairs(padding),
        output_padding=tuple(output_padding), dilation=tuple(dilation), groups=groups),
        grad_output, weight)


@torch.library.custom_op("gpuconv::conv_transpose_weight", mutates_args=())
def _conv_transpose_weight_op(x: Tensor, grad_output: Tensor, weight_shape: Sequence[int],
                              stride: Sequence[int], padding: Sequence[int],
                              output_padding: Sequence[int], dilation: Sequence[int],
                              groups: int, deterministic: bool) -> Tensor:
    return _eager(x.dtype, lambda x, g: _grad.conv_transpose_weight(
        x, tuple(weight_shape), g, stride=tuple(stride), padding=_pairs(padding),
        output_padding=tuple(output_padding), dilation=tuple(dilation), groups=groups,
        deterministic=deterministic), x, grad_output)


@torch.library.custom_op("gpuconv::depthwise_conv", mutates_args=())
def _depthwise_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int],
                  padding: Sequence[int], dilation: Sequence[int], padding_mode: str) -> Tensor:
    return _eager(x.dtype, lambda x, w, b: _api.depthwise_conv(
        x, w, b, stride=tuple(stride), padding=_pairs(padding), dilation=tuple(dilation),
        padding_mode=padding_mode), x, weight, bias)


@_depthwise_op.register_fake
def _(x, weight, bias, stride, padding, dilation, padding_mode):
    out = _conv_out(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    return _new_empty(x, (x.shape[0], weight.shape[0], *out))


@torch.library.custom_op("gpuconv::depthwise_conv_input", mutates_args=())
def _depthwise_input_op(grad_output: Tensor, weight: Tensor, input_shape: Sequence[int],
                        stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                        padding_mode: str) -> Tensor:
    return _eager(grad_output.dtype, lambda g, w: _grad.depthwise_conv_input(
        tuple(input_shape), w, g, stride=tuple(stride), padding=_pairs(padding),
        dilation=tuple(dilation), padding_mode=padding_mode), grad_output, weight)


@torch.library.custom_op("gpuconv::depthwise_conv_weight", mutates_args=())
def _depthwise_weight_op(x: Tensor, grad_output: Tensor, weight_shape: Sequence[int],
                         stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                         padding_mode: str, deterministic: bool) -> Tensor:
    return _eager(x.dtype, lambda x, g: _grad.depthwise_conv_weight(
        x, tuple(weight_shape), g, stride=tuple(stride), padding=_pairs(padding),
        dilation=tuple(dilation), padding_mode=padding_mode, deterministic=deterministic),
        x, grad_output)


for _input_op, _weight_op in ((_conv_input_op, _conv_weight_op),
                              (_conv_transpose_input_op, _conv_transpose_weight_op),
                              (_depthwise_input_op, _depthwise_weight_op)):
    _input_op.register_fake(lambda g, w, input_shape, *geometry: _new_empty(g, input_shape))
    _weight_op.register_fake(lambda x, g, weight_shape, *rest: x.new_empty(weight_shape))


def _register_family(forward_op, input_op, weight_op):
    """Register the backwards of one weighted family (see the comment above) and its vmap
    rules."""

    def forward_setup(ctx, inputs, output):
        x, weight, bias, *ctx.geometry = inputs
        ctx.save_for_backward(x, weight)

    def forward_backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        gx = (_like_input(_call(input_op, grad_output, weight, list(x.shape), *ctx.geometry),
                          x) if needs[0] else None)
        gw = (_call(weight_op, x, grad_output, list(weight.shape), *ctx.geometry,
                    _deterministic()) if needs[1] else None)
        gb = _bias_grad(grad_output) if needs[2] else None
        return (gx, gw, gb) + (None,) * len(ctx.geometry)

    def input_setup(ctx, inputs, output):
        grad_output, weight, _, *ctx.geometry = inputs
        ctx.save_for_backward(grad_output, weight)

    def input_backward(ctx, grad):
        grad_output, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        d_grad_output = (_call(forward_op, grad, weight, None, *ctx.geometry)
                         if needs[0] else None)
        d_weight = (_call(weight_op, grad, grad_output, list(weight.shape), *ctx.geometry,
                          _deterministic()) if needs[1] else None)
        return (d_grad_output, d_weight, None) + (None,) * len(ctx.geometry)

    def weight_setup(ctx, inputs, output):
        x, grad_output, _, *geometry, _ = inputs
        ctx.geometry = geometry
        ctx.save_for_backward(x, grad_output)

    def weight_backward(ctx, grad):
        x, grad_output = ctx.saved_tensors
        needs = ctx.needs_input_grad
        d_x = (_like_input(_call(input_op, grad_output, grad, list(x.shape), *ctx.geometry), x)
               if needs[0] else None)
        d_grad_output = _call(forward_op, x, grad, None, *ctx.geometry) if needs[1] else None
        return (d_x, d_grad_output, None) + (None,) * (len(ctx.geometry) + 1)

    _register_autograd(forward_op, forward_backward, setup_context=forward_setup)
    _register_autograd(input_op, input_backward, setup_context=input_setup)
    _register_autograd(weight_op, weight_backward, setup_context=weight_setup)
    forward_op.register_vmap(_vmap_rule(forward_op, per_sample=[0]))
    input_op.register_vmap(_vmap_rule(input_op, per_sample=[0], shape_arg=2))
    weight_op.register_vmap(_vmap_rule(weight_op))


_register_family(_conv_op, _conv_input_op, _conv_weight_op)
_register_family(_conv_transpose_op, _conv_transpose_input_op, _conv_transpose_weight_op)
_register_family(_depthwise_op, _depthwise_input_op, _depthwise_weight_op)


@torch.library.custom_op("gpuconv::separable_conv", mutates_args=())
def _separable_op(x: Tensor, depthwise_weight: Tensor, pointwise_weight: Tensor,
                  bias: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
                  dilation: Sequence[int], padding_mode: str) -> Tensor:
    return _eager(x.dtype, lambda x, dw, pw, b: _api.separable_conv(
        x, dw, pw, b, stride=tuple(stride), padding=_pairs(padding), dilation=tuple(dilation),
        padding_mode=padding_mode), x, depthwise_weight, pointwise_weight, bias)


@_separable_op.register_fake
def _(x, depthwise_weight, pointwise_weight, bias, stride, padding, dilation, padding_mode):
    out = _conv_out(x.shape[2:], depthwise_weight.shape[2:], stride, padding, dilation)
    return _new_empty(x, (x.shape[0], pointwise_weight.shape[0], *out))


def _separable_setup(ctx, inputs, output):
    x, dw, pw, bias, *ctx.geometry = inputs
    ctx.save_for_backward(x, dw, pw)


def _separable_backward(ctx, grad_output):
    """The chain rule through the depthwise step and the 1x1 step, in differentiable ops (as
    :func:`gpuconv.grad.separable_conv` computes it): the depthwise result is recomputed."""
    x, dw, pw = ctx.saved_tensors
    needs = ctx.needs_input_grad
    nd = x.dim() - 2
    pointwise = ([1] * nd, [0] * (2 * nd), [1] * nd, 1, "zeros")
    gx = gdw = gpw = gb = None
    if needs[1] or needs[2]:
        mid = _call(_depthwise_op, x, dw, None, *ctx.geometry)
        if needs[2]:
            gpw = _call(_conv_weight_op, mid, grad_output, list(pw.shape), *pointwise,
                        _deterministic())
    if needs[0] or needs[1]:
        mid_shape = [x.shape[0], dw.shape[0], *grad_output.shape[2:]]
        grad_mid = _call(_conv_input_op, grad_output, pw, mid_shape, *pointwise)
        if needs[0]:
            gx = _like_input(_call(_depthwise_input_op, grad_mid, dw, list(x.shape),
                                   *ctx.geometry), x)
        if needs[1]:
            gdw = _call(_depthwise_weight_op, x, grad_mid, list(dw.shape), *ctx.geometry,
                        _deterministic())
    if needs[3]:
        gb = _bias_grad(grad_output)
    return (gx, gdw, gpw, gb) + (None,) * len(ctx.geometry)


_register_autograd(_separable_op, _separable_backward, setup_context=_separable_setup)
_separable_op.register_vmap(_vmap_rule(_separable_op, per_sample=[0]))


@torch.library.custom_op("gpuconv::deform_conv2d", mutates_args=())
def _deform_op(x: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor],
               mask: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
               dilation: Sequence[int]) -> Tensor:
    return _eager(x.dtype, lambda x, o, w, b, m: _api.deform_conv2d(
        x, o, w, b, mask=m, stride=tuple(stride), padding=_pairs(padding),
        dilation=tuple(dilation)), x, offset, weight, bias, mask)


@_deform_op.register_fake
def _(x, offset, weight, bias, mask, stride, padding, dilation):
    return _new_empty(x, (x.shape[0], weight.shape[0], *offset.shape[2:]))


@torch.library.custom_op("gpuconv::deform_conv2d_backward", mutates_args=())
def _deform_backward_op(x: Tensor, offset: Tensor, weight: Tensor, mask: Optional[Tensor],
                        grad_output: Tensor, stride: Sequence[int], padding: Sequence[int],
                        dilation: Sequence[int]
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients for (x, offset, weight, mask); the mask's is empty when there is no mask."""

    def compute(x, o, w, m, g):
        grads = _grad.deform_conv2d(x, o, w, g, mask=m, bias=False, stride=tuple(stride),
                                    padding=_pairs(padding), dilation=tuple(dilation))
        grad_mask = grads.mask if m is not None else x[:0].reshape(0).copy()
        return grads.input, grads.offset, grads.weight, grad_mask

    return _eager(x.dtype, compute, x, offset, weight, mask, grad_output)


@_deform_backward_op.register_fake
def _(x, offset, weight, mask, grad_output, stride, padding, dilation):
    return (_new_empty(x, x.shape), x.new_empty(offset.shape), x.new_empty(weight.shape),
            x.new_empty(mask.shape if mask is not None else (0,)))


def _deform_setup(ctx, inputs, output):
    x, offset, weight, bias, mask, *ctx.geometry = inputs
    ctx.has_mask = mask is not None
    ctx.save_for_backward(x, offset, weight, mask)


def _deform_backward(ctx, grad_output):
    x, offset, weight, mask = ctx.saved_tensors
    needs = ctx.needs_input_grad
    gx = go = gw = gm = gb = None
    if needs[0] or needs[1] or needs[2] or needs[4]:
        gx, go, gw, gm = _call(_deform_backward_op, x, offset, weight,
                               mask if ctx.has_mask else None, grad_output, *ctx.geometry)
    if needs[3]:
        gb = _bias_grad(grad_output)
    return (gx if needs[0] else None, go if needs[1] else None, gw if needs[2] else None, gb,
            gm if needs[4] and ctx.has_mask else None) + (None,) * len(ctx.geometry)


def _deform_double_backward(ctx, *grads):
    raise RuntimeError(
        "deform_conv2d: double backward is not supported: the gradients of gpuconv's "
        "deformable convolution are differentiable only once (they would need second "
        "derivatives of the bilinear sampling). Use create_graph=False for deform_conv2d, or "
        "compute the gradient penalty with finite differences."
    )


_register_autograd(_deform_op, _deform_backward, setup_context=_deform_setup)
_deform_op.register_vmap(_vmap_rule(_deform_op, per_sample=[0, 1, 4]))
_register_autograd(_deform_backward_op, _deform_double_backward,
                                      setup_context=lambda ctx, inputs, output: None)
_deform_backward_op.register_vmap(_vmap_rule(_deform_backward_op))


# ------------------------------------------------------------- functional API


def _conv(op, x, weight, bias, stride, padding, dilation, groups, padding_mode):
    _check_tensors(op, x=x, weight=weight, bias=bias)
    x, unbatched = _batched(op, x, weight.dim() - 2)
    _check_dtypes(op, x, bias, weight=weight)
    geom = _validate.conv_setup(op, tuple(x.shape), tuple(weight.shape), stride=stride,
                                padding=padding, dilation=dilation, groups=groups,
                                padding_mode=padding_mode)
    _check_bias(op, bias, weight.shape[0])
    y = _call(_conv_op, x, weight, bias, list(geom.stride),
              _flat_pads(geom.pad_lo, geom.pad_hi), list(geom.dilation), geom.groups,
              geom.padding_mode)
    return y.squeeze(0) if unbatched else y


def _conv_transpose(op, x, weight, bias, stride, padding, output_padding, dilation, groups):
    _check_tensors(op, x=x, weight=weight, bias=bias)
    x, unbatched = _batched(op, x, weight.dim() - 2)
    # As F.conv_transposeNd: the weight must have the input's dtype; a bias of another dtype
    # is converted (PyTorch does not check it).
    _check_dtypes(op, x, None, weight=weight)
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    geom = _validate.conv_transpose_setup(op, tuple(x.shape), tuple(weight.shape), stride=stride,
                                          padding=padding, output_padding=output_padding,
                                          dilation=dilation, groups=groups)
    _check_bias(op, bias, weight.shape[1] * geom.groups)
    # The geometry's high crop is negative where output_padding (or 'same') extends past the
    # full output; as op arguments that is a zero pad and an output_padding.
    hi = [max(h, 0) for h in geom.pad_hi]
    extra = [h - g for h, g in zip(hi, geom.pad_hi)]
    y = _call(_conv_transpose_op, x, weight, bias, list(geom.stride),
              _flat_pads(geom.pad_lo, hi), extra, list(geom.dilation), geom.groups)
    return y.squeeze(0) if unbatched else y


def _depthwise_conv(op, x, weight, bias, stride, padding, dilation, padding_mode):
    _check_tensors(op, x=x, weight=weight, bias=bias)
    x, unbatched = _batched(op, x, weight.dim() - 2)
    _check_dtypes(op, x, bias, weight=weight)
    geom = _validate.depthwise_setup(op, tuple(x.shape), tuple(weight.shape), stride=stride,
                                     padding=padding, dilation=dilation, padding_mode=padding_mode)
    _check_bias(op, bias, weight.shape[0])
    y = _call(_depthwise_op, x, weight, bias, list(geom.stride),
              _flat_pads(geom.pad_lo, geom.pad_hi), list(geom.dilation), geom.padding_mode)
    return y.squeeze(0) if unbatched else y


def _separable_conv(op, x, depthwise_weight, pointwise_weight, bias, stride, padding, dilation,
                    padding_mode):
    _check_tensors(op, x=x, depthwise_weight=depthwise_weight,
                   pointwise_weight=pointwise_weight, bias=bias)
    x, unbatched = _batched(op, x, depthwise_weight.dim() - 2)
    _check_dtypes(op, x, bias, depthwise_weight=depthwise_weight,
                  pointwise_weight=pointwise_weight)
    geom = _validate.depthwise_setup(op, tuple(x.shape), tuple(depthwise_weight.shape),
                                     stride=stride, padding=padding, dilation=dilation,
                                     padding_mode=padding_mode, w_name="depthwise_weight")
    c_out = _validate.check_pointwise_weight(op, tuple(pointwise_weight.shape), x.dim(),
                                             depthwise_weight.shape[0], c_out_in_message=True)
    _check_bias(op, bias, c_out)
    y = _call(_separable_op, x, depthwise_weight, pointwise_weight, bias, list(geom.stride),
              _flat_pads(geom.pad_lo, geom.pad_hi), list(geom.dilation), geom.padding_mode)
    return y.squeeze(0) if unbatched else y


def _deform_conv2d(op, x, offset, weight, bias, stride, padding, dilation, mask):
    _check_tensors(op, x=x, offset=offset, weight=weight, bias=bias, mask=mask)
    x, unbatched = _batched(op, x, 2)
    if unbatched:
        offset = offset.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    _check_dtypes(op, x, bias, offset=offset, weight=weight, mask=mask)
    geom, _ = _validate.deform_setup(op, tuple(x.shape), tuple(offset.shape), tuple(weight.shape),
                                     None if mask is None else tuple(mask.shape), stride=stride,
                                     padding=padding, dilation=dilation)
    _check_bias(op, bias, weight.shape[0])
    y = _call(_deform_op, x, offset, weight, bias, mask, list(geom.stride),
              _flat_pads(geom.pad_lo, geom.pad_hi), list(geom.dilation))
    return y.squeeze(0) if unbatched else y


def conv(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
         padding_mode="zeros"):
    """:func:`gpuconv.conv` on tensors, differentiable (to any order) in ``x``, ``weight`` and
    ``bias``.

    Arguments as for :func:`gpuconv.conv`; ``x`` may also be unbatched, ``(C_in, *spatial)``,
    as in ``torch.nn.functional``. Tensors on one device (CPU or CUDA, or meta for shapes)
    and of one dtype (float16, bfloat16, float32 or float64). Returns a tensor on the same
    device.

    Raises
    ------
    TypeError
        Non-tensors, unsupported dtypes or devices.
    DtypeMismatchError
        Tensors of different dtypes (a ``RuntimeError`` and a ``TypeError``).
    ValueError
        Arguments :func:`gpuconv.conv` rejects.

    Examples
    --------
    >>> import torch
    >>> import gpuconv.torch as gt
    >>> x = torch.arange(5.0).reshape(1, 1, 5).requires_grad_()
    >>> y = gt.conv(x, torch.tensor([[[1.0, 0.0, -1.0]]]), padding=1, padding_mode="circular")
    >>> y.detach()
    tensor([[[ 3., -2., -2., -2.,  3.]]])
    >>> y.sum().backward(); x.grad
    tensor([[[0., 0., 0., 0., 0.]]])
    """
    return _conv("conv", x, weight, bias, stride, padding, dilation, groups, padding_mode)


def conv_transpose(x, weight, bias=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                   groups=1):
    """:func:`gpuconv.conv_transpose` on tensors, differentiable (to any order) in every
    tensor argument; ``x`` may be unbatched. ``padding='same'`` gives ``size * stride``
    outputs. Raises as :func:`conv`.

    Examples
    --------
    >>> import torch
    >>> import gpuconv.torch as gt
    >>> gt.conv_transpose(torch.ones(1, 1, 3), torch.ones(1, 1, 3), stride=2,
    ...                   padding="same").shape
    torch.Size([1, 1, 6])
    """
    return _conv_transpose("conv_transpose", x, weight, bias, stride, padding, output_padding,
                           dilation, groups)


def depthwise_conv(x, weight, bias=None, *, stride=1, padding=0, dilation=1,
                   padding_mode="zeros"):
    """:func:`gpuconv.depthwise_conv` on tensors, differentiable (to any order) in every
    tensor argument; ``x`` may be unbatched. Raises as :func:`conv`.

    Examples
    --------
    >>> import torch
    >>> import gpuconv.torch as gt
    >>> gt.depthwise_conv(torch.ones(1, 2, 4), torch.ones(4, 1, 3), padding="same",
    ...                   padding_mode="replicate").shape
    torch.Size([1, 4, 4])
    """
    return _depthwise_conv("depthwise_conv", x, weight, bias, stride, padding, dilation,
                           padding_mode)


def separable_conv(x, depthwise_weight, pointwise_weight, bias=None, *, stride=1, padding=0,
                   dilation=1, padding_mode="zeros"):
    """:func:`gpuconv.separable_conv` on tensors, differentiable (to any order) in every
    tensor argument; ``x`` may be unbatched. Raises as :func:`conv`.

    Examples
    --------
    >>> import torch
    >>> import gpuconv.torch as gt
    >>> gt.separable_conv(torch.ones(1, 2, 3), torch.ones(2, 1, 2),
    ...                   torch.tensor([[[1.0], [10.0]]]))
    tensor([[[22., 22.]]])
    """
    return _separable_conv("separable_conv", x, depthwise_weight, pointwise_weight, bias,
                           stride, padding, dilation, padding_mode)


def deform_conv2d(x, offset, weight, bias=None, *, stride=1, padding=0, dilation=1, mask=None):
    """:func:`gpuconv.deform_conv2d` on tensors, differentiable once in every tensor argument
    (``x``, ``offset``, ``weight``, ``bias``, ``mask``); torchvision's semantics.

    ``x``, ``offset`` and ``mask`` may be unbatched together. Raises as :func:`conv`; a
    second derivative (double backward) raises ``RuntimeError``.

    Examples
    --------
    >>> import torch
    >>> import gpuconv.torch as gt
    >>> x = torch.arange(4.0).reshape(1, 1, 1, 4)
    >>> shift = torch.zeros(1, 2, 1, 4)
    >>> shift[:, 1] = 0.5                                # half a pixel to the right
    >>> gt.deform_conv2d(x, shift, torch.ones(1, 1, 1, 1))
    tensor([[[[0.5000, 1.5000, 2.5000, 1.5000]]]])
    """
    return _deform_conv2d("deform_conv2d", x, offset, weight, bias, stride, padding, dilation,
                          mask)


# ------------------------------------------------------------------- modules


def _factory(device, dtype):
    return {"device": device, "dtype": dtype}


def _positive_channels(name: str, value) -> int:
    value = _shapes.as_int(value, name)
    if value < 1:
        raise ValueError(f"{name}={value} must be a positive int")
    return value


def _init_uniform(tensor, fan_in: int):
    """PyTorch's default init for conv layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the
    bias, and kaiming_uniform(a=sqrt(5)) for weights, which reduces to the same bound."""
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
    nn.init.uniform_(tensor, -bound, bound)


def _spatial(value, ndim: int):
    """A layer's stride/dilation/output_padding as ``torch.nn`` stores them: one int per
    spatial dim (an int is repeated; other values are left for gpuconv's checks)."""
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * ndim
    return value


def _layer_padding(op: str, padding, ndim: int):
    """A layer's padding as ``torch.nn`` stores it: 'same'/'valid', or a tuple (of ints, or of
    (lo, hi) pairs, gpuconv's extension)."""
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(
                f"{op}: padding={padding!r} must be an int, a tuple, 'valid' or 'same'"
            )
        return padding
    if isinstance(padding, (list, tuple)):
        return tuple(tuple(p) if isinstance(p, (list, tuple)) else p for p in padding)
    return _spatial(padding, ndim)


class _Layer(nn.Module):
    """Shared by the layers: rank checking (with unbatched inputs), channel and padding_mode
    validation, weight creation and initialization, and a ``torch.nn``-style repr."""

    _ndim: int
    _op: str

    def _check_input(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self._op}: input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (self._ndim + 1, self._ndim + 2):
            raise ValueError(
                f"{self._op}: input must have {self._ndim + 2} dims (N, C, {self._ndim} spatial) "
                f"or {self._ndim + 1} (unbatched), got shape {tuple(x.shape)}"
            )

    def _set_channels(self, in_channels, out_channels, groups):
        """Set ``in_channels``, ``out_channels`` and ``groups`` (positive ints, ``groups``
        dividing both)."""
        self.in_channels = _positive_channels("in_channels", in_channels)
        self.out_channels = _positive_channels("out_channels", out_channels)
        self.groups = _positive_channels("groups", groups)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"{self._op}: groups={self.groups} must divide in_channels={self.in_channels} "
                f"and out_channels={self.out_channels}"
            )

    def _set_spatial(self, kernel_size, stride, padding, dilation, output_padding=0):
        nd = self._ndim
        self.kernel_size = _shapes.positive_tuple(kernel_size, nd, "kernel_size", self._op)
        self.stride = _spatial(stride, nd)
        self.padding = _layer_padding(self._op, padding, nd)
        self.dilation = _spatial(dilation, nd)
        self.output_padding = _spatial(output_padding, nd)

    def _set_padding_mode(self, padding_mode):
        if padding_mode not in _shapes.PADDING_MODES:
            raise ValueError(
                f"{self._op}: padding_mode={padding_mode!r} must be one of {_shapes.PADDING_MODES}"
            )
        self.padding_mode = padding_mode

    def _set_weight(self, weight_shape, bias, out_channels, device, dtype):
        """Create ``weight`` of ``weight_shape`` and, if ``bias``, a bias of ``out_channels``
        values; then initialize them."""
        f = _factory(device, dtype)
        self.weight = nn.Parameter(torch.empty(weight_shape, **f))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **f))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        # fan_in = weight[0].numel(), for transposed weights too, as PyTorch computes it
        fan_in = self.weight[0].numel()
        _init_uniform(self.weight, fan_in)
        if self.bias is not None:
            _init_uniform(self.bias, fan_in)

    def _head(self):
        """The leading positional part of the repr."""
        return f"{self.in_channels}, {self.out_channels}"

    def extra_repr(self):
        """``torch.nn.ConvNd``'s format: defaults are left out."""
        nd = self._ndim
        s = f"{self._head()}, kernel_size={self.kernel_size}, stride={self.stride}"
        multiplier = getattr(self, "multiplier", 1)
        if multiplier != 1:
            s += f", multiplier={multiplier}"
        if self.padding != (0,) * nd:
            s += f", padding={self.padding}"
        if self.dilation != (1,) * nd:
            s += f", dilation={self.dilation}"
        if getattr(self, "output_padding", (0,) * nd) != (0,) * nd:
            s += f", output_padding={self.output_padding}"
        if getattr(self, "groups", 1) != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if getattr(self, "padding_mode", "zeros") != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


class _ConvNd(_Layer):
    transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        self._set_channels(in_channels, out_channels, groups)
        self._set_padding_mode(padding_mode)
        self._set_spatial(kernel_size, stride, padding, dilation)
        self._set_weight((self.out_channels, self.in_channels // self.groups, *self.kernel_size),
                         bias, self.out_channels, device, dtype)

    def forward(self, input):
        self._check_input(input)
        return _conv(self._op, input, self.weight, self.bias, self.stride, self.padding,
                     self.dilation, self.groups, self.padding_mode)


class Conv1d(_ConvNd):
    """1-D convolution layer, ``torch.nn.Conv1d``'s arguments, attributes, state_dict and
    repr, computed by gpuconv.

    Beyond ``torch.nn.Conv1d``: ``padding='same'`` with any stride, ``((lo, hi),)`` padding.
    """

    _ndim, _op = 1, "Conv1d"


class Conv2d(_ConvNd):
    """2-D convolution layer, ``torch.nn.Conv2d``'s arguments, attributes, state_dict and
    repr, computed by gpuconv.

    Beyond ``torch.nn.Conv2d``: ``padding='same'`` with any stride, ``((lo, hi), ...)``
    padding.
    """

    _ndim, _op = 2, "Conv2d"


class Conv3d(_ConvNd):
    """3-D convolution layer, ``torch.nn.Conv3d``'s arguments, attributes, state_dict and
    repr, computed by gpuconv.

    Beyond ``torch.nn.Conv3d``: every ``padding_mode`` (reflect included) in 3-D,
    ``padding='same'`` with any stride, ``((lo, hi), ...)`` padding.
    """

    _ndim, _op = 3, "Conv3d"


class _ConvTransposeNd(_Layer):
    transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 device=None, dtype=None):
        super().__init__()
        self._set_channels(in_channels, out_channels, groups)
        if padding_mode != "zeros":
            raise ValueError(
                f"{self._op}: padding_mode={padding_mode!r} must be 'zeros' for a transposed "
                f"convolution"
            )
        self.padding_mode = padding_mode
        self._set_spatial(kernel_size, stride, padding, dilation, output_padding)
        self._set_weight((self.in_channels, self.out_channels // self.groups, *self.kernel_size),
                         bias, self.out_channels, device, dtype)

    def _output_padding(self, input, output_size):
        """``torch.nn``'s rule: the output_padding that gives ``output_size`` (its spatial
        sizes, or the full shape), which must lie between the size without output padding
        and ``stride - 1`` more."""
        nd = self._ndim
        if output_size is None:
            return self.output_padding
        if self.padding == "same":
            raise ValueError(
                f"{self._op}: output_size cannot be combined with padding='same', which fixes "
                f"the output size to size * stride"
            )
        output_size = [int(v) for v in output_size]
        leading = input.dim() - nd
        if len(output_size) == leading + nd:
            output_size = output_size[leading:]
        if len(output_size) != nd:
            raise ValueError(
                f"{self._op}: for {input.dim()}D input, output_size must have {nd} or "
                f"{leading + nd} elements (got {len(output_size)})"
            )
        spatial = tuple(input.shape[leading:])
        geom = _validate.conv_transpose_setup(
            self._op, (1, self.in_channels, *spatial), tuple(self.weight.shape),
            stride=self.stride, padding=self.padding, output_padding=0,
            dilation=self.dilation, groups=self.groups)
        min_sizes = list(geom.out_size)
        max_sizes = [m + s - 1 for m, s in zip(min_sizes, geom.stride)]
        if any(not lo <= size <= hi for size, lo, hi in zip(output_size, min_sizes, max_sizes)):
            raise ValueError(
                f"{self._op}: requested an output size of {output_size}, but valid sizes range "
                f"from {min_sizes} to {max_sizes} (for an input of {list(spatial)})"
            )
        return tuple(size - lo for size, lo in zip(output_size, min_sizes))

    def forward(self, input, output_size=None):
        """Transposed convolution of ``input``; ``output_size`` (spatial sizes, or the whole
        output shape) picks the output padding, as in ``torch.nn.ConvTranspose2d``."""
        self._check_input(input)
        output_padding = self._output_padding(input, output_size)
        return _conv_transpose(self._op, input, self.weight, self.bias, self.stride,
                               self.padding, output_padding, self.dilation, self.groups)


class ConvTranspose1d(_ConvTransposeNd):
    """1-D transposed convolution layer, ``torch.nn.ConvTranspose1d``'s arguments (and
    ``forward(input, output_size=None)``); also ``padding='same'`` (``size * stride``
    outputs)."""

    _ndim, _op = 1, "ConvTranspose1d"


class ConvTranspose2d(_ConvTransposeNd):
    """2-D transposed convolution layer (see :class:`ConvTranspose1d`)."""

    _ndim, _op = 2, "ConvTranspose2d"


class ConvTranspose3d(_ConvTransposeNd):
    """3-D transposed convolution layer (see :class:`ConvTranspose1d`)."""

    _ndim, _op = 3, "ConvTranspose3d"


class _DepthwiseConvNd(_Layer):
    def __init__(self, channels, kernel_size, multiplier=1, stride=1, padding=0, dilation=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        self.channels = _positive_channels("channels", channels)
        self.multiplier = _positive_channels("multiplier", multiplier)
        self._set_padding_mode(padding_mode)
        self._set_spatial(kernel_size, stride, padding, dilation)
        del self.output_padding
        out = self.channels * self.multiplier
        self._set_weight((out, 1, *self.kernel_size), bias, out, device, dtype)

    def _head(self):
        return f"{self.channels}"

    def forward(self, input):
        self._check_input(input)
        return _depthwise_conv(self._op, input, self.weight, self.bias, self.stride,
                               self.padding, self.dilation, self.padding_mode)


class DepthwiseConv1d(_DepthwiseConvNd):
    """1-D depthwise convolution: ``channels * multiplier`` outputs, output ``c * multiplier +
    m`` filtering input channel ``c`` (``nn.Conv1d(channels, channels * multiplier, k,
    groups=channels)``, whose state_dict it shares, by a dedicated path)."""

    _ndim, _op = 1, "DepthwiseConv1d"


class DepthwiseConv2d(_DepthwiseConvNd):
    """2-D depthwise convolution (see :class:`DepthwiseConv1d`)."""

    _ndim, _op = 2, "DepthwiseConv2d"


class DepthwiseConv3d(_DepthwiseConvNd):
    """3-D depthwise convolution (see :class:`DepthwiseConv1d`)."""

    _ndim, _op = 3, "DepthwiseConv3d"


class _SeparableConvNd(_Layer):
    def __init__(self, in_channels, out_channels, kernel_size, multiplier=1, stride=1, padding=0,
                 dilation=1, bias=True, padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        self.in_channels = _positive_channels("in_channels", in_channels)
        self.out_channels = _positive_channels("out_channels", out_channels)
        self.multiplier = _positive_channels("multiplier", multiplier)
        self._set_padding_mode(padding_mode)
        self._set_spatial(kernel_size, stride, padding, dilation)
        del self.output_padding
        f = _factory(device, dtype)
        mid = self.in_channels * self.multiplier
        self.depthwise_weight = nn.Parameter(torch.empty((mid, 1, *self.kernel_size), **f))
        self.pointwise_weight = nn.Parameter(
            torch.empty((self.out_channels, mid, *(1,) * self._ndim), **f))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_channels, **f))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        _init_uniform(self.depthwise_weight, self.depthwise_weight[0].numel())
        fan_in = self.pointwise_weight[0].numel()
        _init_uniform(self.pointwise_weight, fan_in)
        if self.bias is not None:
            _init_uniform(self.bias, fan_in)

    def forward(self, input):
        self._check_input(input)
        return _separable_conv(self._op, input, self.depthwise_weight, self.pointwise_weight,
                               self.bias, self.stride, self.padding, self.dilation,
                               self.padding_mode)


class SeparableConv1d(_SeparableConvNd):
    """1-D depthwise-separable convolution: a depthwise convolution (``multiplier`` filters
    per input channel, carrying stride/padding/dilation), then a 1x1 convolution to
    ``out_channels`` with the bias."""

    _ndim, _op = 1, "SeparableConv1d"


class SeparableConv2d(_SeparableConvNd):
    """2-D depthwise-separable convolution (see :class:`SeparableConv1d`)."""

    _ndim, _op = 2, "SeparableConv2d"


class SeparableConv3d(_SeparableConvNd):
    """3-D depthwise-separable convolution (see :class:`SeparableConv1d`)."""

    _ndim, _op = 3, "SeparableConv3d"


class DeformConv2d(_Layer):
    """Deformable 2-D convolution layer, ``torchvision.ops.DeformConv2d``'s arguments,
    state_dict and repr; ``forward(input, offset, mask=None)``. ``padding`` may also be
    ((lo, hi), (lo, hi)). Differentiable once (see :func:`deform_conv2d`)."""

    _ndim, _op = 2, "DeformConv2d"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, device=None, dtype=None):
        super().__init__()
        self._set_channels(in_channels, out_channels, groups)
        self._set_spatial(kernel_size, stride, padding, dilation)
        del self.output_padding
        self._set_weight((self.out_channels, self.in_channels // self.groups, *self.kernel_size),
                         bias, self.out_channels, device, dtype)

    def forward(self, input, offset, mask=None):
        self._check_input(input)
        return _deform_conv2d(self._op, input, offset, self.weight, self.bias, self.stride,
                              self.padding, self.dilation, mask)
