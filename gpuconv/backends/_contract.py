"""The backend contract: what every backend (``numpy``, ``emulate``, ``cuda``) provides.

:class:`Backend` is a :class:`typing.Protocol`; the NumPy backend
(:class:`gpuconv.backends.numpy_backend.NumpyBackend`, the reference) and the device backend
(:class:`gpuconv.backends.device.DeviceBackend`, behind ``emulate`` and ``cuda``) satisfy it
structurally, without inheriting from it. ``tests/test_backend_contract.py`` checks that each
has every method with the Protocol's parameter names.

What a backend receives: arrays already validated by :mod:`gpuconv._validate`, C-contiguous,
aligned, in the result dtype and native byte order, as the backend's own array type (``xp``'s);
one exception: a backend with an (optional) ``reads_channels_last(method, geom) -> bool``
method receives a dense channels-last ``x`` (NHWC strides, docs/layouts.md) as it is when that
says True for the call (:func:`gpuconv._layout.reads_in_place`; the NumPy backend's 1x1
``conv`` and ``depthwise_conv``), and may return a channels-last result then.
``geom`` is a :class:`gpuconv._shapes.ConvGeometry` as
:func:`gpuconv._shapes.backend_geometry` made it. Never an empty call (N = 0 or an empty
spatial dim): the caller answers those without a backend. Each method returns a new
C-contiguous array of the result dtype (``deform_conv2d_grad``: a tuple of them), or a
channels-last one for a channels-last ``x`` (the caller puts results in the promised format,
:func:`gpuconv._validate.finish`). float16 and
bfloat16 are accumulated in float32 (:func:`gpuconv._dtypes.accumulation_dtype`).

Which dtypes a backend computes: its ``dtypes`` attribute (a tuple of ``numpy.dtype``), or
float16/32/64 without one. :func:`gpuconv._validate.check_backend_dtype` refuses the others
before the backend is called (the NumPy backend declares bfloat16 too; the device backend
declares nothing until its kernels gain bfloat16 instantiations).

A new operation adds a method here, to both backend classes, and one named call in
``gpuconv/_api.py`` or ``gpuconv/grad.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .._shapes import ConvGeometry

Array = Any  # numpy.ndarray or cupy.ndarray (the backend's ``xp.ndarray``)


class Backend(Protocol):
    """Every method a backend provides; shapes in the docstrings are (N, C, *spatial).

    Attributes
    ----------
    name : str
        ``"numpy"``, ``"emulate"`` or ``"cuda"``.
    xp : module
        The backend's array module: ``numpy``, or ``cupy`` for ``"cuda"``.
    """

    name: str
    xp: Any

    # ------------------------------------------------------------------ forward

    def convolve(self, a: Array, v: Array, mode: str) -> Array:
        """``numpy.convolve(a, v, mode)`` of 1-D ``a``, ``v``; ``mode`` 'full'/'same'/'valid'."""
        ...

    def correlate(self, a: Array, v: Array, mode: str) -> Array:
        """``numpy.correlate(a, v, mode)`` of 1-D ``a``, ``v`` (``v`` conjugated)."""
        ...

    def conv(self, x: Array, weight: Array, bias: Array | None, geom: ConvGeometry) -> Array:
        """Convolution: x (N, C_in, *in), weight (C_out, C_in / groups, *k) -> (N, C_out, *out)."""
        ...

    def conv_transpose(self, x: Array, weight: Array, bias: Array | None,
                       geom: ConvGeometry) -> Array:
        """Transposed convolution: weight (C_in, C_out / groups, *k); ``geom`` transposed."""
        ...

    def depthwise_conv(self, x: Array, weight: Array, bias: Array | None,
                       geom: ConvGeometry) -> Array:
        """Depthwise convolution: weight (C * multiplier, 1, *k), ``geom.groups`` = C."""
        ...

    def deform_conv2d(self, x: Array, offset: Array, weight: Array, bias: Array | None,
                      mask: Array | None, geom: ConvGeometry, offset_groups: int) -> Array:
        """Deformable 2-D convolution (v1 without ``mask``, v2 with), torchvision's layouts."""
        ...

    # ---------------------------------------------------------------- gradients

    def conv_input_grad(self, weight: Array, grad_output: Array, geom: ConvGeometry) -> Array:
        """Gradient of ``conv`` with respect to x, of shape (N, C_in, *geom.in_size)."""
        ...

    def conv_weight_grad(self, x: Array, grad_output: Array, geom: ConvGeometry,
                         deterministic: bool = False) -> Array:
        """Gradient of ``conv`` with respect to weight; ``deterministic``: no float atomics."""
        ...

    def conv_transpose_input_grad(self, weight: Array, grad_output: Array,
                                  geom: ConvGeometry) -> Array:
        """Gradient of ``conv_transpose`` with respect to x (``geom`` transposed)."""
        ...

    def conv_transpose_weight_grad(self, x: Array, grad_output: Array, geom: ConvGeometry,
                                   deterministic: bool = False) -> Array:
        """Gradient of ``conv_transpose`` with respect to weight (``geom`` transposed)."""
        ...

    def depthwise_conv_input_grad(self, weight: Array, grad_output: Array,
                                  geom: ConvGeometry) -> Array:
        """Gradient of ``depthwise_conv`` with respect to x."""
        ...

    def depthwise_conv_weight_grad(self, x: Array, grad_output: Array, geom: ConvGeometry,
                                   deterministic: bool = False) -> Array:
        """Gradient of ``depthwise_conv`` with respect to weight."""
        ...

    def deform_conv2d_grad(self, x: Array, offset: Array, weight: Array, mask: Array | None,
                           grad_output: Array, geom: ConvGeometry, offset_groups: int
                           ) -> tuple[Array, Array, Array, Array | None]:
        """Gradients of ``deform_conv2d``: (input, offset, weight, mask; mask None without)."""
        ...
