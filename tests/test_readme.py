"""The README cannot rot: every ```python block runs, and its two commands stay consistent.

The Python blocks run in order in one namespace, as a reader would paste them into one session
(one test per block, named after the block's first line in ``README.md``). A block is skipped,
with the reason, only when what it needs is missing here:

* a block that says ``# needs CuPy and a GPU`` runs only where the ``cuda`` backend is available;
  a block that imports ``cupy`` without saying so fails (the README must say what needs a GPU);
* a block that uses the ``"emulate"`` backend runs only where the emulator is available (g++);
* a block whose imports fail because an optional package is not installed (``torch`` for
  ``gpuconv.torch``, ``dask`` for ``gpuconv.dask``, ...) is skipped naming the package. A
  missing *gpuconv* module is a failure, not a skip.

An expression statement whose line ends in a comment that is a Python literal, such as
``y.shape   # (8, 16, 32, 32)``, is checked: the value must equal the literal.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import importlib
import importlib.util
import io
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tokenize

import numpy as np
import pytest

import gpuconv

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"

#: The comment that marks a block needing CuPy and a CUDA device.
GPU_MARKER = "# needs CuPy and a GPU"


@dataclasses.dataclass
class Block:
    language: str
    line: int          # 1-based line of the block's first source line in README.md
    source: str

    @property
    def id(self) -> str:
        first = next((ln.strip() for ln in self.source.splitlines()
                      if ln.strip() and not ln.lstrip().startswith("#")), "")
        return f"L{self.line}:{first[:40]}"


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of ``text``, with their language and first line number."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = re.match(r"^```(\w*)\s*$", lines[i])
        if match:
            start, language, body = i + 1, match.group(1), []
            i += 1
            while i < len(lines) and lines[i].rstrip() != "```":
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"README.md line {start}: unclosed code fence"
            blocks.append(Block(language, start + 1, "\n".join(body) + "\n"))
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text())
PYTHON = [b for b in BLOCKS if b.language == "python"]
BASH = [b for b in BLOCKS if b.language in ("bash", "sh", "shell", "console")]


# --- what a block needs -------------------------------------------------------------------

def _imported_modules(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            # ``from gpuconv import torch`` imports the submodule gpuconv.torch
            names += [f"{node.module}.{alias.name}" for alias in node.names
                      if _is_submodule(node.module, alias.name)]
    return names


def _is_submodule(package: str, name: str) -> bool:
    """Whether ``package.name`` is a module (False where ``package`` itself is missing: the
    import of ``package`` then says what is missing)."""
    try:
        return importlib.util.find_spec(f"{package}.{name}") is not None
    except (ImportError, ValueError, AttributeError):
        return False


def _missing_package(exc: ImportError) -> str | None:
    """The non-gpuconv package whose absence caused ``exc`` (walking the cause chain), if any."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return None if exc.name.split(".")[0] == "gpuconv" else exc.name
        exc = exc.__cause__ or exc.__context__
    return None


def skip_reason(block: Block, tree: ast.Module) -> str | None:
    """Why ``block`` cannot run here, or None. Fails (not skips) on an unmarked CuPy block."""
    modules = _imported_modules(tree)
    uses_cupy = any(m.split(".")[0] == "cupy" for m in modules)
    if GPU_MARKER in block.source:
        status = gpuconv.available_backends()["cuda"]
        if status != "available":
            return f"README.md line {block.line} needs CuPy and a GPU: cuda backend {status}"
    elif uses_cupy:
        pytest.fail(f"README.md line {block.line}: a block that imports cupy must say "
                    f"{GPU_MARKER!r}")
    uses_emulate = any(isinstance(node, ast.Constant) and node.value == "emulate"
                       for node in ast.walk(tree))
    if uses_emulate:
        status = gpuconv.available_backends()["emulate"]
        if status != "available":
            return f"README.md line {block.line} uses the emulate backend: {status}"
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing = _missing_package(exc)
            if missing is None and module.split(".")[0] != "gpuconv":
                missing = module
            if missing is None:
                raise   # a gpuconv module that does not import: a failure, not a skip
            return f"README.md line {block.line} needs {missing!r}, which is not installed"
    return None


# --- running a block ----------------------------------------------------------------------

def _literal_comments(source: str) -> dict[int, object]:
    """{line: value} for each comment that parses as a Python literal (block-relative lines)."""
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            try:
                found[token.start[0]] = ast.literal_eval(token.string[1:].strip())
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                pass
    return found


def _equal(value, expected) -> bool:
    if isinstance(value, np.ndarray) or isinstance(expected, np.ndarray):
        return np.array_equal(value, expected)
    return value == expected


def run_block(block: Block, namespace: dict) -> None:
    """Execute ``block`` statement by statement in ``namespace``, checking literal comments."""
    tree = ast.parse(block.source, filename="README.md")
    expected = _literal_comments(block.source)
    ast.increment_lineno(tree, block.line - 1)   # tracebacks point at README.md's lines
    for statement in tree.body:
        relative = statement.end_lineno - block.line + 1
        if isinstance(statement, ast.Expr) and relative in expected:
            code = compile(ast.Expression(statement.value), "README.md", "eval")
            value = eval(code, namespace)   # noqa: S307 - the README's own code
            assert _equal(value, expected[relative]), (
                f"README.md line {statement.end_lineno}: got {value!r}, the README says "
                f"{expected[relative]!r}")
        else:
            exec(compile(ast.Module([statement], []), "README.md", "exec"), namespace)  # noqa: S102


@dataclasses.dataclass
class Session:
    """The shared namespace, and which blocks have run (or were skipped) so far."""

    namespace: dict = dataclasses.field(repr=False)
    done: int = 0
    skipped: list = dataclasses.field(default_factory=list)
    failed: list = dataclasses.field(default_factory=list)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPLBACKEND", "Agg")                     # a block that plots shows nothing
        patch.chdir(tmp_path_factory.mktemp("readme"))        # a block that writes files writes here
        yield Session(namespace={"__name__": "__readme__"})


def _run_in_session(index: int, session: Session) -> str | None:
    """Run block ``index`` in ``session``; return a skip reason or None; raise on failure."""
    block = PYTHON[index]
    tree = ast.parse(block.source, filename="README.md")
    reason = skip_reason(block, tree)
    if reason is not None:
        session.skipped.append(block.line)
        return reason
    try:
        run_block(block, session.namespace)
    except BaseException:
        session.failed.append(block.line)
        raise
    return None


@pytest.mark.parametrize("index", range(len(PYTHON)), ids=[b.id for b in PYTHON])
def test_readme_python_block(index, session):
    # Blocks before this one run first (they were deselected, e.g. by -k): a block builds on
    # the names its predecessors defined.
    while session.done < index:
        position, session.done = session.done, session.done + 1
        try:
            _run_in_session(position, session)
        except Exception:
            pass   # reported by that block's own test
    session.done = index + 1
    try:
        reason = _run_in_session(index, session)
    except NameError as exc:
        earlier = sorted(set(session.skipped + session.failed))
        raise AssertionError(f"{exc}; earlier blocks that did not run (README.md lines): "
                             f"{earlier}") from exc
    if reason is not None:
        pytest.skip(reason)


def test_readme_has_python_blocks_and_the_gpu_marker_where_cupy_is_used():
    assert len(PYTHON) >= 4, "the README's Python examples were not found"
    assert any(GPU_MARKER in b.source for b in PYTHON), "the CuPy example lost its marker"


def test_gpuconv_grad_is_reachable_after_import_gpuconv():
    """``gpuconv.grad`` after a bare ``import gpuconv`` (it was an AttributeError), without
    importing torch or cupy."""
    code = ("import sys, gpuconv; print(callable(gpuconv.grad.conv_input), "
            "'torch' in sys.modules, 'cupy' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "False"], out.stdout + out.stderr


# --- the README's two commands ------------------------------------------------------------

def _commands() -> tuple[str, str]:
    commands = [b.source.strip() for b in BASH if "python3 -m venv" in b.source]
    check = [c for c in commands if c.endswith("python -m gpuconv")]
    test = [c for c in commands if shlex.split(c.split(" && ")[-1])[0] == "pytest"]
    assert len(check) == 1 and len(test) == 1, commands
    return check[0], test[0]


def _venv_of(command: str) -> str:
    match = re.match(r"python3 -m venv (\S+) && \. (\S+)/bin/activate && ", command)
    assert match and match.group(1) == match.group(2), command
    return match.group(1)


def test_readme_commands_use_separate_environments():
    """Running the README's two commands in order must not reuse the first one's venv."""
    check, test = _commands()
    assert _venv_of(check) != _venv_of(test)
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    for venv in (_venv_of(check), _venv_of(test)):
        assert any(fnmatch.fnmatchcase(venv, pattern.strip().rstrip("/"))
                   for pattern in ignored if pattern.strip()), f"{venv} is not in .gitignore"


def test_ci_runs_the_readme_test_command():
    """``.ci/run`` runs exactly what the README's test command runs after activating its venv."""
    _, test = _commands()
    after_activate = test.split("/bin/activate && ", 1)[1]
    ci_lines = [line.strip() for line in CI_RUN.read_text().splitlines()]
    assert after_activate in ci_lines, (
        f".ci/run must contain the README's test command {after_activate!r} as one line")
    last = after_activate.split(" && ")[-1]  # the status of the run is pytest's
    assert shlex.split(last)[0] == "pytest", last
    syntax = subprocess.run(["bash", "-n", str(CI_RUN)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


# --- the skip rules themselves ------------------------------------------------------------

def _reason(source, line=1):
    block = Block("python", line, source)
    return skip_reason(block, ast.parse(source))


def test_a_block_needing_a_missing_package_is_skipped_naming_it(monkeypatch):
    assert "'no_such_package_xyz'" in _reason("import no_such_package_xyz.sub as s\n")
    assert "'no_such_package_xyz'" in _reason("from no_such_package_xyz.sub import f\n")
    # gpuconv.torch without torch installed: skipped, naming torch
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "gpuconv.torch", raising=False)
    assert "needs 'torch'" in _reason("from gpuconv import torch as gt\n")
    assert _reason("import numpy as np\nimport gpuconv\n") is None


def test_a_missing_gpuconv_module_fails_instead_of_skipping():
    with pytest.raises(ModuleNotFoundError):
        _reason("import gpuconv.no_such_module\n")


def test_cupy_blocks_must_carry_the_marker(monkeypatch):
    with pytest.raises(pytest.fail.Exception, match="must say"):
        _reason("import cupy\n")
    monkeypatch.setattr(gpuconv, "available_backends",
                        lambda: {"numpy": "available", "emulate": "available",
                                 "cuda": "no CUDA device"})
    assert "needs CuPy and a GPU" in _reason(f"{GPU_MARKER}\nimport cupy\n")
