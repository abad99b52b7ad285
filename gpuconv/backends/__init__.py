"""Backends: objects that compute validated calls.

Every backend has ``name``, ``xp`` (its array module) and one method per operation::

    conv(x, weight, bias, geom)                     # x (N, C_in, *in), weight (C_out, C_in/g, *k)
    conv_transpose(x, weight, bias, geom)           # weight (C_in, C_out/g, *k)
    depthwise_conv(x, weight, bias, geom)           # weight (C*mult, 1, *k)
    deform_conv2d(x, offset, weight, bias, mask, geom, offset_groups)
    convolve(a, v, mode), correlate(a, v, mode)     # 1-D, NumPy semantics

Array arguments arrive C-contiguous, in the result dtype, as the backend's array type;
``geom`` is a :class:`gpuconv._shapes.ConvGeometry`. Methods return a new C-contiguous array.
``gpuconv._dispatch`` creates the backends; ``numpy_backend`` is the reference and
``device`` holds the CUDA kernels' wrappers, shared by the ``cuda`` and ``emulate`` backends.
"""
