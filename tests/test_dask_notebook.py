"""Execute ``notebooks/04-larger-than-memory.ipynb`` (gpuconv.dask at a reduced size).

The notebook asserts its own results against the whole-array gpuconv calls (and NumPy for
``convolve``); this test runs it top to bottom in a kernel of this interpreter, checks the JSON
it writes, and that it is committed without outputs. Skipped without dask/zarr or nbclient.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest

for _module in ("dask.array", "distributed", "zarr", "nbformat", "nbclient", "ipykernel",
                "matplotlib"):
    pytest.importorskip(_module, reason=f"notebook 04 needs {_module}")
import nbclient  # noqa: E402
import nbformat  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "04-larger-than-memory.ipynb"
KERNEL = "gpuconv-dask-notebook-test"


def test_notebook_04_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"cell {index}"


def test_notebook_04_runs_and_matches_whole_array(tmp_path, monkeypatch):
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "gpuconv test kernel", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p))
    monkeypatch.setenv("GPUCONV_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.delenv("GPUCONV_BACKEND", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name=KERNEL, resources={
        "metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    assert "larger-than-memory notebook complete" in text
    checks = json.loads((tmp_path / "04-larger-than-memory.json").read_text())
    assert checks["max_offset_raises"] is True
    assert checks["max_input_chunks_per_task"] <= 27
    errors = {k: v for k, v in checks.items() if isinstance(v, float)}
    assert len(errors) >= 9 and max(errors.values()) < 1e-5, errors
