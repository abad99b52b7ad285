"""The device backends: gpuconv's CUDA kernels, on a GPU (``"cuda"``) or on the CPU emulator
(``"emulate"``).

Both backends are one :class:`DeviceBackend` class around an executor that loads kernels
(:mod:`._executor`); everything else -- choosing kernels, launch configurations, argument
conversion (:func:`gpuconv._launch.launch`) -- is written once and shared. Each operation lives
in its own module here, its gradients included: ``_convolve.py`` (``convolve``/``correlate``),
``_conv.py`` (``conv``, ``depthwise_conv``), ``_conv_transpose.py``, ``_deform.py``
(``deform_conv2d``). Adding an operation means adding one module and one
:class:`DeviceBackend` method that calls it.
"""

from ._backend import DeviceBackend, make_backend, unavailable_reason

__all__ = ["DeviceBackend", "make_backend", "unavailable_reason"]
