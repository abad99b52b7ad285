"""Backends: objects that compute validated calls.

Every backend has ``name``, ``xp`` (its array module) and one method per operation::

    conv(x, weight, bias, geom)                     # x (N, C_in, *in), weight (C_out, C_in/g, *k)
    conv_transpose(x, weight, bias, geom)           # weight (C_in, C_out/g, *k)
    depthwise_conv(x, weight, bias, geom)           # weight (C*mult, 1, *k)
    deform_conv2d(x, offset, weight, bias, mask, geom, offset_groups)
    convolve(a, v, mode), correlate(a, v, mode)     # 1-D, NumPy semantics

and one per gradient (see ``gpuconv.grad``)::

    conv_input_grad(weight, grad_output, geom)
    conv_weight_grad(x, grad_output, geom, deterministic=False)
    conv_transpose_input_grad / conv_transpose_weight_grad      # same pattern
    depthwise_conv_input_grad / depthwise_conv_weight_grad      # same pattern
    deform_conv2d_grad(x, offset, weight, mask, grad_output, geom, offset_groups)

Array arguments arrive C-contiguous, in the result dtype, as the backend's array type;
``geom`` is a :class:`gpuconv._shapes.ConvGeometry`. Methods return a new C-contiguous array.
``gpuconv._dispatch`` creates the backends; ``numpy_backend`` is the reference and
``device`` holds the CUDA kernels' wrappers, shared by the ``cuda`` and ``emulate`` backends.
"""
