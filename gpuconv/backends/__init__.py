"""Backends: objects that compute validated calls.

Every backend has ``name``, ``xp`` (its array module) and one method per operation and per
gradient; :class:`gpuconv.backends._contract.Backend` (a ``typing.Protocol``) lists them with
their signatures and says what a backend receives and returns. In short::

    conv(x, weight, bias, geom)                     # x (N, C_in, *in), weight (C_out, C_in/g, *k)
    conv_transpose(x, weight, bias, geom)           # weight (C_in, C_out/g, *k)
    depthwise_conv(x, weight, bias, geom)           # weight (C*mult, 1, *k)
    deform_conv2d(x, offset, weight, bias, mask, geom, offset_groups)
    convolve(a, v, mode), correlate(a, v, mode)     # 1-D, NumPy semantics
    conv_input_grad(weight, grad_output, geom)      # and conv_transpose_/depthwise_conv_input_grad
    conv_weight_grad(x, grad_output, geom, deterministic=False)     # and the same two
    deform_conv2d_grad(x, offset, weight, mask, grad_output, geom, offset_groups)

``gpuconv._dispatch`` creates the backends; ``numpy_backend`` is the reference and
``device`` holds the CUDA kernels' wrappers, shared by the ``cuda`` and ``emulate`` backends.
"""
