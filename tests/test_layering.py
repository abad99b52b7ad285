"""No module of gpuconv uses a private name of a sibling module outside its own sub-package.

A private name starts with one underscore (``_check``, not ``__version__``). A module may use
the private names of modules in its own sub-package (``gpuconv/_emulator/__init__.py`` may
import ``_build._x``; ``device/_backend.py`` may call ``_deform._x``): a sub-package is one
unit. Everywhere else, what a module offers its siblings is public (``_validate.check_out``,
``_shapes.as_int``); importing a private *module* (``from . import _shapes``) is fine, a
private name defined in another module (``from ._api import _check_array``, or
``_api._Arrays`` after ``from . import _api``) is not. The top-level modules of ``gpuconv``
are siblings of each other, not one sub-package.

The check reads every ``gpuconv/**/*.py`` with ``ast`` (nothing is imported): ``from X import
_name`` and ``alias._name`` where ``alias`` is bound to a gpuconv module (``from . import
_api``, ``import gpuconv.grad as g``, ``import gpuconv`` then ``gpuconv._shapes._x``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gpuconv

ROOT = Path(gpuconv.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _package(module: str) -> str:
    path = MODULES[module]
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _allowed(importer: str, target: str) -> bool:
    """Whether ``importer`` may use ``target``'s private names: ``target`` is the importer
    itself, or lies inside the importer's own sub-package (not the top-level package)."""
    package = _package(importer)
    return target == importer or (package != "gpuconv" and target.startswith(package + "."))


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module name that ``from <node.module> import ...`` reads from."""
    if node.level == 0:
        return node.module or ""
    base = _package(importer).split(".")
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private_uses(module: str, source: str | None = None) -> list[str]:
    """Each use, in ``module`` (its file, or ``source`` as its text), of a private name of a
    module it may not reach into."""
    if source is None:
        source = MODULES[module].read_text()
    tree = ast.parse(source, filename=str(MODULES[module]))
    aliases: dict[str, str] = {}  # local name -> gpuconv module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            if source != "gpuconv" and not source.startswith("gpuconv."):
                continue
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:  # a module: bind it, it may be private
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
                elif _is_private(alias.name) and not _allowed(module, source):
                    found.append((node.lineno,
                                  f"{module}:{node.lineno}: from {source} import {alias.name}"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "gpuconv" or alias.name.startswith("gpuconv."):
                    if alias.asname:
                        aliases[alias.asname] = alias.name
                    else:
                        aliases["gpuconv"] = "gpuconv"
    for node in ast.walk(tree):
        # the outermost attribute of a chain on a module alias: gpuconv._shapes._as_int
        if not isinstance(node, ast.Attribute):
            continue
        chain, base = [], node
        while isinstance(base, ast.Attribute):
            chain.append(base.attr)
            base = base.value
        if not isinstance(base, ast.Name) or base.id not in aliases:
            continue
        target = aliases[base.id]
        for attr in reversed(chain):
            if f"{target}.{attr}" in MODULES:
                target = f"{target}.{attr}"
                continue
            if _is_private(attr) and not _allowed(module, target):
                found.append((node.lineno, f"{module}:{node.lineno}: {target}.{attr}"))
            break
    return [text for _, text in sorted(set(found))]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_of_other_modules(module):
    uses = private_uses(module)
    assert not uses, "private names used across modules:\n" + "\n".join(uses)


def test_the_check_sees_violations():
    """The check bites: the patterns it must find, and the ones it must allow."""
    source = (
        "from . import _api, _shapes\n"
        "from ._validate import _hidden, check_out\n"
        "import gpuconv\n"
        "_api._Arrays\n"
        "gpuconv._shapes._as_int\n"
        "_shapes.as_int\n"
        "gpuconv.__version__\n"
    )
    assert private_uses("gpuconv.grad", source) == [
        "gpuconv.grad:2: from gpuconv._validate import _hidden",
        "gpuconv.grad:4: gpuconv._api._Arrays",
        "gpuconv.grad:5: gpuconv._shapes._as_int",
    ]


def test_a_sub_package_may_share_private_names():
    assert _allowed("gpuconv._emulator", "gpuconv._emulator._build")
    assert _allowed("gpuconv.backends.device._backend", "gpuconv.backends.device._deform")
    assert not _allowed("gpuconv.backends.device._backend", "gpuconv.backends.numpy_grad")
    assert not _allowed("gpuconv.grad", "gpuconv._api")
