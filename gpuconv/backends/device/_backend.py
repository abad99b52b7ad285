"""DeviceBackend: the ``"cuda"`` and ``"emulate"`` backends, and whether each can run here."""

from __future__ import annotations

from ... import _algorithms, _kernels
from ..._shapes import transpose_as_conv
from . import _conv, _conv_algorithms, _conv_transpose, _convolve, _deform
from ._executor import CupyExecutor, EmulatorExecutor, Executor


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` (``"emulate"`` or ``"cuda"``) cannot run here, or None if it can.

    Examples of reasons: ``"g++ not found"``, ``"CuPy not installed"``, ``"no CUDA device"``.
    """
    if name == "emulate":
        try:
            _kernels.kernel_dir()
        except FileNotFoundError as exc:
            return str(exc)
        try:
            from ... import _emulator
        except ImportError as exc:
            return f"the emulator cannot be imported ({exc})"
        if not _emulator.available():
            return _emulator.unavailable_reason() or "the emulator's C++ compiler is not usable"
        return None
    if name == "cuda":
        try:
            import cupy
        except ImportError:
            return "CuPy not installed"
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDARuntimeError (no driver), ...
            return f"no CUDA device ({type(exc).__name__}: {exc})"
        if count < 1:
            return "no CUDA device"
        return None
    raise ValueError(f"name={name!r} must be 'emulate' or 'cuda'")


def make_backend(name: str) -> "DeviceBackend":
    """The device backend ``name`` (``"emulate"`` or ``"cuda"``).

    Raises
    ------
    ValueError
        For another name.
    RuntimeError
        If the backend cannot run here; the message says why (see :func:`unavailable_reason`).
    """
    reason = unavailable_reason(name)
    if reason is not None:
        raise RuntimeError(f"backend {name!r} is unavailable: {reason}")
    executor = EmulatorExecutor() if name == "emulate" else CupyExecutor()
    return DeviceBackend(executor)


class DeviceBackend:
    """gpuconv's CUDA kernels behind the backend interface (see :mod:`gpuconv.backends`).

    ``xp`` is ``numpy`` for ``"emulate"`` and ``cupy`` for ``"cuda"``. Each operation is one
    method calling its module in this package, which picks kernels and launch configurations
    and launches through ``self.executor`` (written once for both backends).
    """

    def __init__(self, executor: Executor):
        self.executor = executor
        self.name = executor.name
        self.xp = executor.xp
        #: The conv-family dtypes it computes (gpuconv._validate.check_backend_dtype): float16/
        #: 32/64, and bfloat16 with ml_dtypes (on ``cuda`` only with a CuPy that has bfloat16).
        self.dtypes = executor.dtypes

    def __repr__(self):
        return f"DeviceBackend({self.name!r})"

    def convolve(self, a, v, mode):
        """``numpy.convolve(a, v, mode)`` with the kernels of ``kernels/convolve.cu``."""
        return _convolve.correlate(self, a, v, mode, convolve=True)

    def correlate(self, a, v, mode):
        """``numpy.correlate(a, v, mode)`` with the kernels of ``kernels/convolve.cu``."""
        return _convolve.correlate(self, a, v, mode, convolve=False)

    #: The conv-forward algorithms and the default choice among them (see
    #: :mod:`gpuconv._algorithms` and ``_conv_algorithms``).
    conv_algorithms = _conv_algorithms.REGISTRY
    default_conv_algorithm = staticmethod(_conv_algorithms.default_name)
    #: ... and those of conv_transpose (and conv's input gradient) and the weight gradients.
    algorithms_for = staticmethod(_conv_algorithms.algorithms_for)

    def reads_channels_last(self, method: str, geom) -> bool:
        """Whether ``method`` receives a dense channels-last ``x`` as it is
        (:func:`gpuconv._layout.reads_in_place`): ``conv``, whose ``implicit_gemm`` reads it
        in place with its channels-last gather where it can (C_in / groups a multiple of 16
        bytes of channels) and returns a channels-last result; every other conv algorithm
        copies it to NCDHW once (``_conv_algorithms.nchw``), as the copy before the backend
        would have."""
        return method == "conv"

    def conv(self, x, weight, bias, geom):
        """Convolution (1-D to 3-D) with the selected algorithm (:func:`gpuconv.use_algorithm`,
        autotune, else the default heuristic of ``_conv_algorithms``): a GEMM for 1x1,
        ``depthwise.cu`` for groups == C_in, ``conv_tiled`` / ``conv_direct`` of
        ``kernels/conv.cu`` (see ``_conv``), or the tensor-core ``conv_igemm``."""
        return _algorithms.run_conv("conv", self, x, weight, bias, geom)

    def depthwise_conv(self, x, weight, bias, geom):
        """Depthwise convolution (1-D to 3-D) with ``depthwise_tiled`` of
        ``kernels/depthwise.cu`` (see ``_conv``)."""
        return _conv.depthwise_conv(self, x, weight, bias, geom)

    def conv_transpose(self, x, weight, bias, geom):
        """Transposed convolution (1-D to 3-D) with the selected algorithm: ``conv_transpose3d``
        of ``kernels/conv_transpose.cu`` (gather form, see ``_conv_transpose``) or the
        tensor-core ``conv_igemm`` (transposed gather)."""
        return _algorithms.run_conv("conv_transpose (or conv's input gradient)", self, x,
                                    weight, bias, geom, operation="conv_transpose")

    def deform_conv2d(self, x, offset, weight, bias, mask, geom, offset_groups):
        """Deformable convolution v1/v2: ``deform_im2col`` of ``kernels/deform.cu`` and a
        GEMM per group through ``self.executor.matmul`` (see ``_deform``)."""
        return _deform.deform_conv2d(self, x, offset, weight, bias, mask, geom, offset_groups)

    # Gradients (see gpuconv.grad; the NumPy backend's are in numpy_grad.GradMixin, with the
    # same signatures). Each lives in its operation's module; input gradients reuse the
    # forward kernels.
    def conv_input_grad(self, weight, grad_output, geom):
        """Gradient of ``conv`` with respect to its input: ``conv_transpose`` of grad_output
        (zeros padding), or of the padded input then ``pad_fold`` of ``kernels/pad_fold.cu``."""
        return _conv.conv_input_grad(self, weight, grad_output, geom)

    def conv_weight_grad(self, x, grad_output, geom, deterministic=False):
        """Gradient of ``conv`` with respect to its weight, with the selected algorithm:
        ``conv_weight_grad`` (or, for one input channel per group, ``depthwise_weight_grad``)
        of ``kernels/conv_grad.cu``, or the tensor-core ``conv_igemm`` (split-K)."""
        return _algorithms.run_weight_grad("conv_weight_grad", self, x, grad_output, geom,
                                           deterministic)

    def conv_transpose_input_grad(self, weight, grad_output, geom):
        """Gradient of ``conv_transpose`` with respect to its input: ``conv`` of grad_output."""
        return _conv_transpose.conv_transpose_input_grad(self, weight, grad_output, geom)

    def conv_transpose_weight_grad(self, x, grad_output, geom, deterministic=False):
        """Gradient of ``conv_transpose`` with respect to its weight (``conv_weight_grad`` with
        the roles of x and grad_output exchanged)."""
        return _algorithms.run_weight_grad("conv_transpose_weight_grad", self, grad_output, x,
                                           transpose_as_conv(geom), deterministic)

    def depthwise_conv_input_grad(self, weight, grad_output, geom):
        """Gradient of ``depthwise_conv`` with respect to its input (a grouped
        ``conv_input_grad`` with groups = C)."""
        return _conv.conv_input_grad(self, weight, grad_output, geom)

    def depthwise_conv_weight_grad(self, x, grad_output, geom, deterministic=False):
        """Gradient of ``depthwise_conv`` with respect to its weight: ``depthwise_weight_grad``
        of ``kernels/conv_grad.cu`` (or a forced algorithm)."""
        return _algorithms.run_weight_grad("depthwise_conv_weight_grad", self, x, grad_output,
                                           geom, deterministic)

    def deform_conv2d_grad(self, x, offset, weight, mask, grad_output, geom, offset_groups):
        """Gradients (input, offset, weight, mask) of ``deform_conv2d``: the forward's sampling,
        two GEMMs per group, and ``kernels/deform_grad.cu`` (see ``_deform``)."""
        return _deform.deform_conv2d_grad(self, x, offset, weight, mask, grad_output, geom,
                                        offset_groups)
