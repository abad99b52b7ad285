"""Every backend class satisfies the backend contract, ``gpuconv.backends._contract.Backend``.

The NumPy backend and the device backend (one class behind ``emulate`` and ``cuda``) must each
have every method of the Protocol, with the Protocol's parameter names, kinds and defaults, so
that ``gpuconv._api`` and ``gpuconv.grad`` can call any backend by name. Neither needs a GPU or
g++: the classes are inspected, not instantiated. A lost or renamed method, or a renamed
parameter, fails here (not as a skip somewhere else).
"""

from __future__ import annotations

import inspect

import pytest

from gpuconv.backends._contract import Backend
from gpuconv.backends.device import DeviceBackend
from gpuconv.backends.numpy_backend import NumpyBackend

BACKEND_CLASSES = [NumpyBackend, DeviceBackend]


def contract_methods() -> dict[str, inspect.Signature]:
    """The Protocol's methods (name -> signature), without typing.Protocol's own machinery."""
    return {name: inspect.signature(func)
            for name, func in vars(Backend).items()
            if inspect.isfunction(func) and not name.startswith("_")}


def _parameters(signature: inspect.Signature) -> list[tuple[str, object, bool]]:
    """(name, kind, has a default) of each parameter: what a caller relies on."""
    return [(p.name, p.kind, p.default is not inspect.Parameter.empty)
            for p in signature.parameters.values()]


def contract_violations(cls) -> list[str]:
    """What ``cls`` lacks or gets wrong against the Protocol, one line each."""
    problems = []
    for name, expected in contract_methods().items():
        method = getattr(cls, name, None)
        if not callable(method):
            problems.append(f"{cls.__name__} lacks {name}{expected}")
            continue
        got = inspect.signature(method)
        if _parameters(got) != _parameters(expected):
            problems.append(f"{cls.__name__}.{name}{got} does not match {name}{expected}")
    return problems


def test_the_contract_lists_every_operation():
    """The Protocol itself: every forward operation and every gradient (a method dropped from
    the Protocol would silently drop it from the check below)."""
    assert set(contract_methods()) == {
        "convolve", "correlate", "conv", "conv_transpose", "depthwise_conv", "deform_conv2d",
        "conv_input_grad", "conv_weight_grad", "conv_transpose_input_grad",
        "conv_transpose_weight_grad", "depthwise_conv_input_grad",
        "depthwise_conv_weight_grad", "deform_conv2d_grad",
    }
    assert {"name", "xp"} <= set(Backend.__annotations__)


@pytest.mark.parametrize("cls", BACKEND_CLASSES, ids=lambda c: c.__name__)
def test_every_backend_implements_the_contract(cls):
    """Each method exists, with the Protocol's parameter names, kinds and defaults."""
    problems = contract_violations(cls)
    assert not problems, "\n".join(problems)


def test_numpy_backend_attributes():
    assert NumpyBackend.name == "numpy"
    assert NumpyBackend.xp.__name__ == "numpy"


def test_a_missing_or_renamed_method_is_reported():
    """The check bites: a backend without one method, or with a renamed parameter, fails."""

    class Lost(NumpyBackend):
        pass

    Lost.conv_weight_grad = None  # as if the method were gone
    assert contract_violations(Lost) == [
        f"Lost lacks conv_weight_grad{contract_methods()['conv_weight_grad']}"
    ]

    class Renamed(NumpyBackend):
        def conv(self, x, w, bias, geom):
            return super().conv(x, w, bias, geom)

    (problem,) = contract_violations(Renamed)
    assert problem.startswith("Renamed.conv(self, x, w, bias, geom) does not match conv(")


@pytest.mark.parametrize("name", ["numpy", "emulate", "cuda"])
def test_dispatched_backends_implement_the_contract(name):
    """The objects ``gpuconv._dispatch`` hands out (where they can run here)."""
    from gpuconv import _dispatch

    reason = _dispatch.available_backends()[name]
    if reason != "available":
        pytest.skip(f"backend {name!r}: {reason}")
    backend = _dispatch.get_backend(name)
    problems = contract_violations(type(backend))
    assert not problems, "\n".join(problems)
    assert backend.name == name
