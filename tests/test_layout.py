"""Every import in ``proxy/`` and ``addons/`` points down, and no modules import each other in a circle.

The layers, bottom first (DESIGN.md, "Layout"); a module may import its own package and anything in a lower layer:

    proxy (the package itself: ``from proxy import __version__``)
    proxy.stores, proxy.upstream     leaves: no other wxgate package, not even each other
    proxy.config
    proxy.protocols
    proxy.observability
    proxy.pipeline
    proxy.tools                      anything below the roof; imported by proxy.cli alone
    the roof: the root modules (ROOT_MODULES) and addons.*, which may import each other, except that an addon
              never imports another addon

Every import counts: at module level, inside functions (a lazy import still ties the modules together) and under
``if TYPE_CHECKING:``. The checker is plain functions over source text, so the tests at the bottom prove on small
made-up trees that it finds what it should.
"""

from __future__ import annotations

import ast
import functools
import importlib
import itertools
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("proxy", "addons")
ROOT_MODULES = frozenset(
    {
        "proxy.app",
        "proxy.cli",
        "proxy.hooks",
        "proxy.tasks",
        "proxy.tls",
        "proxy.headlimit",
        "proxy.reload",
        "proxy.workers",
        "proxy.worker_role",
        "proxy.cpus",
    }
)
LAYERS: tuple[tuple[str, ...], ...] = (  # bottom first; a name stands for itself and its submodules
    ("proxy",),
    ("proxy.stores", "proxy.upstream"),
    ("proxy.config",),
    ("proxy.protocols",),
    ("proxy.observability",),
    ("proxy.pipeline",),
    ("proxy.tools",),
    (*sorted(ROOT_MODULES), "addons"),
)
ROOF = len(LAYERS) - 1
TOOLS, CLI = "proxy.tools", "proxy.cli"
ORDER = " < ".join(
    ", ".join(names) if i < ROOF else "the root modules, addons" for i, names in enumerate(LAYERS)
)


@dataclass(frozen=True, slots=True)
class Import:
    importer: str  # module name
    target: str  # the wxgate module it loads
    line: int
    text: str  # the statement as written

    def where(self, files: Mapping[str, str]) -> str:
        return f"{files.get(self.importer, self.importer)}:{self.line}: `{self.text}`"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _known(name: str, modules: Iterable[str]) -> str | None:
    """The longest known module that ``name`` is or lies in (``proxy.config.Config`` -> ``proxy.config``)."""
    known = set(modules)
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return None


def imports_of(module: str, source: str, is_package: bool, modules: Iterable[str]) -> list[Import]:
    """Every import of a wxgate module in ``source``, wherever it stands (function bodies, TYPE_CHECKING)."""
    modules = set(modules)
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import sub` loads the submodule when there is one, else the package's own name.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        else:
            continue
        for target in targets:
            resolved = _known(target, modules) or target
            if target.split(".")[0] in PACKAGES and resolved != module:
                found.append(Import(module, resolved, node.lineno, ast.unparse(node)))
    return found


def _layer(module: str) -> tuple[int, str] | None:
    """(layer index, component): the component is what a module may import freely (its own package)."""
    if module.startswith("addons.") or module == "addons":
        return ROOF, module  # each addon is its own component: addons never import each other
    best: tuple[int, str] | None = None
    for i, names in enumerate(LAYERS):
        for name in names:
            exact = name == "proxy" or name in ROOT_MODULES
            inside = module == name or (not exact and module.startswith(name + "."))
            if inside and (best is None or len(name) > len(best[1])):
                best = (i, name)
    return best


def upward(imports: Iterable[Import], files: Mapping[str, str]) -> list[str]:
    """A message for each import that points up, sideways between leaves or addons, or into the tools."""
    problems = []
    for imp in imports:
        src, dst = _layer(imp.importer), _layer(imp.target)
        if src is None or dst is None:
            unknown = imp.importer if src is None else imp.target
            problems.append(
                f"{imp.where(files)}: {unknown} is in no layer; move it into a sub-package or add it to "
                "ROOT_MODULES in tests/test_layout.py"
            )
            continue
        (low, here), (high, there) = src, dst
        if here == there:
            continue
        if there == TOOLS and imp.importer != CLI:
            problems.append(f"{imp.where(files)}: only {CLI} imports {TOOLS} (the tools are not a library)")
        elif high > low:
            problems.append(f"{imp.where(files)}: upward import, {here} may not import {there} ({ORDER})")
        elif high == low and (low != ROOF or (here.startswith("addons") and there.startswith("addons"))):
            kind = "addons never import each other" if low == ROOF else f"{here} and {there} are leaves"
            problems.append(f"{imp.where(files)}: sideways import, {kind} ({ORDER})")
    return sorted(problems)


def cycles(imports: Iterable[Import], files: Mapping[str, str]) -> list[str]:
    """One message per group of modules that import each other in a circle, naming each import on the way."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports:
        edges.setdefault(imp.importer, {}).setdefault(imp.target, imp)
    problems = []
    for group in _strongly_connected(edges):
        if len(group) < 2:
            continue
        path = _circle(sorted(group)[0], group, edges)
        steps = "\n    ".join(edges[a][b].where(files) for a, b in itertools.pairwise(path))
        problems.append(f"import cycle {' -> '.join(path)}:\n    {steps}")
    return problems


def _strongly_connected(edges: Mapping[str, Mapping[str, Import]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
    return groups


def _circle(start: str, group: set[str], edges: Mapping[str, Mapping[str, Import]]) -> list[str]:
    """A shortest way from ``start`` back to itself inside ``group`` (breadth first)."""
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(edges.get(node, {})):
            if child == start:
                path = [node]
                while (before := parent[path[-1]]) is not None:
                    path.append(before)
                return [*reversed(path), start]
            if child in group and child not in parent:
                parent[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is in a cycle with no way back")


@functools.cache
def tree_imports(root: Path = ROOT) -> tuple[list[Import], dict[str, str]]:
    paths = sorted(p for package in PACKAGES for p in (root / package).rglob("*.py"))
    names = {module_name(p, root): p for p in paths}
    files = {name: str(p.relative_to(root)) for name, p in names.items()}
    found = []
    for name, path in names.items():
        found += imports_of(name, path.read_text(), path.name == "__init__.py", names)
    return found, files


# -- the tree ------------------------------------------------------------------------------------------------


def test_the_tree_has_no_upward_or_sideways_import() -> None:
    imports, files = tree_imports()
    assert len(files) > 50 and len(imports) > 100  # it read the tree
    problems = upward(imports, files)
    assert not problems, "imports must point down:\n" + "\n".join(problems)


def test_the_tree_has_no_import_cycle() -> None:
    imports, files = tree_imports()
    problems = cycles(imports, files)
    assert not problems, "\n".join(problems)


SUB_PACKAGES = sorted(init.parent.name for init in (ROOT / "proxy").glob("*/__init__.py"))


@pytest.mark.parametrize("name", SUB_PACKAGES)
def test_each_sub_package_states_its_public_surface(name: str) -> None:
    package = importlib.import_module(f"proxy.{name}")
    public = getattr(package, "__all__", None)
    assert isinstance(public, list) and public, f"proxy/{name}/__init__.py states no __all__"
    exported: dict[str, object] = {}
    exec(f"from proxy.{name} import *", exported)  # every name listed is there
    assert set(public) <= set(exported)
    modules = {m.stem for m in (ROOT / "proxy" / name).glob("*.py") if not m.name.startswith("_")}
    if set(public) <= modules:  # a package whose surface is its modules lists every one of them
        assert sorted(public) == sorted(modules), f"proxy/{name}/__init__.py: __all__ misses modules"


DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]


def test_the_docs_name_only_files_that_exist() -> None:
    """A module moved or renamed leaves no stale path in README.md or docs/."""
    stale = [
        f"{doc}: {path}"
        for doc in DOCS
        for path in re.findall(r"(?<![\w/.])((?:proxy|addons)/[\w/]*\w\.py)\b", (ROOT / doc).read_text())
        if not (ROOT / path).is_file()
    ]
    assert not stale, "paths that no longer exist:\n" + "\n".join(stale)


# -- the checker, on made-up trees ---------------------------------------------------------------------------


def graph(sources: dict[str, str]) -> tuple[list[Import], dict[str, str]]:
    """Imports of made-up modules; a name ending in ``/`` is a package (``proxy.stores/``)."""
    modules = {name.rstrip("/") for name in sources}
    files = {
        name.rstrip("/"): name.rstrip("/").replace(".", "/")
        + ("/__init__.py" if name.endswith("/") else ".py")
        for name in sources
    }
    found = []
    for name, source in sources.items():
        found += imports_of(name.rstrip("/"), source, name.endswith("/"), modules)
    return found, files


def test_imports_are_found_in_functions_under_type_checking_and_relative() -> None:
    imports, _ = graph(
        {
            "proxy.pipeline/": "",
            "proxy.pipeline.a": (
                "from typing import TYPE_CHECKING\n"
                "import os\n"
                "if TYPE_CHECKING:\n    from proxy.pipeline.b import B\n"
                "def f():\n    import proxy.config.schema as s\n"
                "from . import c\n"
                "from .b import thing\n"
                "from proxy import __version__\n"
            ),
            "proxy.pipeline.b": "",
            "proxy.pipeline.c": "",
            "proxy.config/": "",
            "proxy.config.schema": "",
            "proxy/": "",
        }
    )
    assert sorted((i.target, i.line) for i in imports) == [
        ("proxy", 9),
        ("proxy.config.schema", 6),
        ("proxy.pipeline.b", 4),
        ("proxy.pipeline.b", 8),
        ("proxy.pipeline.c", 7),
    ]


def test_an_upward_import_is_named_with_its_file_and_line() -> None:
    imports, files = graph(
        {
            "proxy.stores.redis": "import json\n\ndef f():\n    from proxy.pipeline.exchange import Exchange\n",
            "proxy.pipeline.exchange": "from proxy.stores.redis import RedisStore\n",
        }
    )
    assert upward(imports, files) == [
        "proxy/stores/redis.py:4: `from proxy.pipeline.exchange import Exchange`: upward import, proxy.stores "
        f"may not import proxy.pipeline ({ORDER})"
    ]


def test_leaves_and_addons_do_not_import_each_other_but_root_modules_may() -> None:
    imports, files = graph(
        {
            "proxy.stores.redis": "from proxy.upstream.client import UpstreamClient\n",
            "proxy.upstream.client": "",
            "addons.forward": "from addons.dedup import Dedup\nfrom proxy.reload import prepare\n",
            "addons.dedup": "from proxy.pipeline.claims import Claims\n",
            "proxy.pipeline.claims": "",
            "proxy.reload": "",
            "proxy.app": "from addons.forward import Forward\nfrom proxy.reload import prepare\n",
        }
    )
    problems = upward(imports, files)
    assert [p.split(": `")[0] for p in problems] == ["addons/forward.py:1", "proxy/stores/redis.py:1"]
    assert "addons never import each other" in problems[0]
    assert "proxy.stores and proxy.upstream are leaves" in problems[1]


def test_only_the_cli_imports_the_tools_and_the_tools_stay_below_the_roof() -> None:
    imports, files = graph(
        {
            "proxy.cli": "from proxy.tools import sender\n",
            "proxy.app": "from proxy.tools.sender import build\n",
            "proxy.tools/": "",
            "proxy.tools.sender": "from proxy.config import Config\nfrom proxy.tools import traffic\n",
            "proxy.tools.traffic": "from proxy.hooks import respond\n",
            "proxy.hooks": "",
            "proxy.config/": "",
        }
    )
    problems = upward(imports, files)
    assert [p.split(": `")[0] for p in problems] == ["proxy/app.py:1", "proxy/tools/traffic.py:1"]
    assert "only proxy.cli imports proxy.tools" in problems[0]
    assert "upward import, proxy.tools may not import proxy.hooks" in problems[1]


def test_a_module_in_no_layer_is_reported() -> None:
    imports, files = graph({"proxy.app": "from proxy.newthing import x\n", "proxy.newthing": ""})
    assert upward(imports, files) == [
        "proxy/app.py:1: `from proxy.newthing import x`: proxy.newthing is in no layer; move it into a "
        "sub-package or add it to ROOT_MODULES in tests/test_layout.py"
    ]


def test_a_cycle_is_shown_import_by_import_even_through_a_lazy_import() -> None:
    imports, files = graph(
        {
            "proxy.stores/": "from proxy.stores.redis import RedisStore\n",
            "proxy.stores.redis": "from proxy.stores.resp import RespClient\n",
            "proxy.stores.resp": "import os\n\ndef target():\n    from proxy.stores import redis_target\n",
            "proxy.stores.base": "",
        }
    )
    assert upward(imports, files) == []  # all within one package: only the cycle is wrong
    assert cycles(imports, files) == [
        "import cycle proxy.stores -> proxy.stores.redis -> proxy.stores.resp -> proxy.stores:\n"
        "    proxy/stores/__init__.py:1: `from proxy.stores.redis import RedisStore`\n"
        "    proxy/stores/redis.py:1: `from proxy.stores.resp import RespClient`\n"
        "    proxy/stores/resp.py:4: `from proxy.stores import redis_target`"
    ]


def test_a_tree_that_points_down_passes() -> None:
    imports, files = graph(
        {
            "proxy/": "",
            "proxy.stores.base": "from proxy import __version__\n",
            "proxy.config.schema": "from proxy.stores.base import Store\n",
            "proxy.protocols.base": "from proxy.config.schema import Route\n",
            "proxy.pipeline.exchange": "from proxy.protocols.base import Protocol\n",
            "addons.verify": "from proxy.pipeline.exchange import Exchange\n",
            "proxy.app": "from addons.verify import Verify\n",
        }
    )
    assert len(imports) == 6
    assert upward(imports, files) == [] and cycles(imports, files) == []
