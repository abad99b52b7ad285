"""Exceptions raised by the CPU emulator."""

from __future__ import annotations


class EmulatorError(RuntimeError):
    """A fault the emulator found while running a launch (or could not run it)."""


class EmulatorCompileError(EmulatorError):
    """g++ failed to compile a kernel module; the message carries g++'s stderr."""


class DivergentBarrierError(EmulatorError):
    """Some threads of a block returned while others wait at ``__syncthreads()``."""


class OutOfBoundsError(EmulatorError):
    """Checked mode: a kernel accessed memory outside an array argument."""


class RaceError(EmulatorError):
    """Race check: the launch's output depends on the order in which threads run."""
