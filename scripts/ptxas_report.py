#!/usr/bin/env python3
"""Print registers, shared memory and spills of every registered kernel instantiation.

Compiles with NVRTC (no GPU needed) for sm_75, sm_80 and sm_90 by default; see
``gpuconv/_nvrtc.py``. Usage::

    python scripts/ptxas_report.py [--arch sm_80 ...] [--file convolve.cu ...]

Needs ``pip install cuda-bindings nvidia-cuda-nvrtc nvidia-cuda-runtime``.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from gpuconv._nvrtc import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
