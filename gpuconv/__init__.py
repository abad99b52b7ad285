"""gpuconv: every convolution in the textbook, for NumPy and CuPy.

NumPy arrays in give NumPy arrays out; CuPy arrays in give CuPy arrays out. See the README
for the API table and semantics, and ``docs/architecture.md`` for how the code is laid out.
"""

from ._api import (
    conv,
    conv1d,
    conv2d,
    conv3d,
    conv_transpose,
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose3d,
    convolve,
    correlate,
    deform_conv2d,
    depthwise_conv,
    separable_conv,
)
from ._dispatch import available_backends, current_backend, use_backend
from ._algorithms import (
    Plan,
    autotune_enabled,
    current_algorithm,
    plan,
    tf32_enabled,
    use_algorithm,
    use_autotune,
    use_tf32,
)

# ``gpuconv.grad`` is reachable right after ``import gpuconv`` (it needs only NumPy).
from . import grad  # noqa: E402  (after _api, which it imports)

__version__ = "0.1.0"

__all__ = [
    "Plan",
    "autotune_enabled",
    "available_backends",
    "conv",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "convolve",
    "correlate",
    "current_algorithm",
    "current_backend",
    "deform_conv2d",
    "depthwise_conv",
    "grad",
    "plan",
    "separable_conv",
    "tf32_enabled",
    "use_algorithm",
    "use_autotune",
    "use_backend",
    "use_tf32",
]
