"""The package layout and the dependency rules the architecture promises (see docs/design/architecture.md, Layout).

Every import counts, top-level or inside a function (a lazy import is still a dependency);
only ``if TYPE_CHECKING:`` blocks are exempt, since they never run. ``importlib.import_module``
and ``__import__`` calls count too, when their argument can be read from the source: a string
literal, a name bound to one, or an f-string over a tuple or dict of literals (jobs/cli.py
imports ``vip2scan.jobs.<name>`` for each name in ``COMMAND_MODULES``); a field that cannot be
read leaves a prefix (``f"vip2scan.jobs.{x}"``) that stands for every module it begins.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

import vip2scan

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDERS = {"model": "vip2scan.model", "pipeline": "vip2scan.pipeline", "jobs": "vip2scan.jobs"}
MAX_LINES = 400

FORBIDDEN = {
    # model/ is torch only; pipeline/ knows nothing of the CLI or of training.
    "model": {"ray", "typer", "vip2scan.pipeline", "vip2scan.jobs"},
    "pipeline": {"typer", "vip2scan.jobs", "ray.train", "vip2scan.model.training"},
}
# The detector is the network: reading and writing files is checkpoint.py's and weights.py's job.
DETECTOR_FORBIDDEN = {"fsspec", "s3fs", "gcsfs", "pyarrow", "zarr", "vip2scan.pipeline",
                      "vip2scan.model.files", "vip2scan.model.weights"}
# weights.py is a leaf: only the file helpers below it, and the layer's error root.
WEIGHTS_ALLOWED_OWN = {"vip2scan.model.files", "vip2scan.model.errors"}
# model/errors.py holds the layer's root exception: every model module may import it (the leaf
# weights.py, the decoder that the decode sandbox's child loads), so it imports only the top root.
MODEL_ERRORS_ALLOWED_OWN = {"vip2scan.errors"}


def _modules() -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every module of the three code folders."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    return skip


def _imports(module: str, path: pathlib.Path) -> list[tuple[str, list[str]]]:
    """(absolute module imported, names taken from it) for every import that can run."""
    return _imports_in(module, path.read_text(), is_package=path.name == "__init__.py",
                       filename=str(path))


def _imports_in(module: str, source: str, *, is_package: bool = False,
                filename: str = "<source>") -> list[tuple[str, list[str]]]:
    """_imports of a module's source text (``module``: its dotted name)."""
    tree = ast.parse(source, filename=filename)
    skip = _type_checking_nodes(tree)
    package = module if is_package else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, [alias.name for alias in node.names]))
    found += [(target, []) for target in _dynamic_imports(tree, module, package, skip)]
    return found


# ------------------------------------------------------------ importlib.import_module, __import__
IMPORT_CALLS = {"importlib.import_module", "import_module", "__import__"}
ANY = "*"  # the rest of a module name the source does not tell: "vip2scan.jobs.*"
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _dynamic_imports(tree: ast.Module, module: str, package: str, skip: set[int]) -> list[str]:
    """Modules that ``importlib.import_module(...)`` / ``__import__(...)`` calls load: absolute
    names, or ``prefix*`` where the rest of the name cannot be read from the source."""
    values = _Values(tree)
    found = []
    for node in ast.walk(tree):
        if (id(node) in skip or not isinstance(node, ast.Call) or not node.args
                or ast.unparse(node.func) not in IMPORT_CALLS):
            continue
        anchor = _package_argument(node, module, package)
        for name in sorted(values.strings(node.args[0], node)):
            name = name.split(ANY, 1)[0] + ANY if ANY in name else name
            if name.startswith(".") and anchor:
                level = len(name) - len(name.lstrip("."))
                name = f"{anchor.rsplit('.', level - 1)[0]}.{name[level:]}"
            if name and not name.startswith((".", ANY)):  # else nothing is known of it
                found.append(name)
    return found


def _package_argument(call: ast.Call, module: str, package: str) -> str | None:
    """The ``package`` argument of ``import_module(name, package)``, where the source tells it."""
    given = call.args[1] if len(call.args) > 1 else next(
        (k.value for k in call.keywords if k.arg == "package"), None)
    if isinstance(given, ast.Name) and given.id in ("__name__", "__package__"):
        return module if given.id == "__name__" else package
    if isinstance(given, ast.Constant) and isinstance(given.value, str):
        return given.value
    return None


class _Values:
    """The strings an expression can evaluate to, read from one module's source: literals,
    f-strings and ``+``, names bound in the enclosing function or at module level, loop
    variables over tuples, lists, sets or dicts of literals, and ``MAPPING[key]``."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.parents = {id(c): n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
        self.busy: set[int] = set()  # bindings being read (x = x + "a" must not loop)

    def strings(self, node: ast.AST, at: ast.AST) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.JoinedStr):
            found = {""}
            for part in node.values:
                part = part.value if isinstance(part, ast.FormattedValue) else part
                found = {a + b for a in found for b in self.strings(part, at)}
            return found
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return {a + b for a in self.strings(node.left, at) for b in self.strings(node.right, at)}
        if isinstance(node, ast.Subscript):  # MAPPING[key]: any of its values
            return self.members(node.value, at, values=True)
        if isinstance(node, ast.Name):
            bound = self.bindings(node.id, at)
            return set().union(*bound) if bound else {ANY}
        return {ANY}

    def members(self, node: ast.AST, at: ast.AST, *, values: bool = False) -> set[str]:
        """The strings a loop over ``node`` yields (``values``: a mapping's values, not its keys)."""
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return set().union(*(self.strings(e, at) for e in node.elts)) or {ANY}
        if isinstance(node, ast.Dict):
            items = node.values if values else [k for k in node.keys if k is not None]
            return set().union(*(self.strings(e, at) for e in items)) or {ANY}
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and not node.args:
            if node.func.attr in ("keys", "values"):  # MAPPING.keys(), MAPPING.values()
                return self.members(node.func.value, at, values=node.func.attr == "values")
        elif isinstance(node, ast.Call) and len(node.args) == 1:  # sorted(X), tuple(X), ...
            return self.members(node.args[0], at, values=values)
        elif isinstance(node, ast.Name):
            for scope in self.scopes(at):
                for stmt in self.statements(scope):
                    value = _assigned(stmt, node.id)
                    if value is not None and id(stmt) not in self.busy:
                        self.busy.add(id(stmt))
                        try:
                            return self.members(value, stmt, values=values)
                        finally:
                            self.busy.discard(id(stmt))
        return {ANY}

    def bindings(self, name: str, at: ast.AST) -> list[set[str]]:
        """The values ``name`` is bound to in the innermost scope around ``at`` that binds it:
        assignments, and ``for`` / comprehension targets (what they loop over)."""
        for scope in self.scopes(at):
            bound = []
            for stmt in self.statements(scope):
                if id(stmt) in self.busy:
                    continue
                self.busy.add(id(stmt))
                try:
                    value = _assigned(stmt, name)
                    if value is not None:
                        bound.append(self.strings(value, stmt))
                    elif (isinstance(stmt, (ast.For, ast.AsyncFor, ast.comprehension))
                          and isinstance(stmt.target, ast.Name) and stmt.target.id == name):
                        bound.append(self.members(stmt.iter, stmt))
                finally:
                    self.busy.discard(id(stmt))
            if bound:
                return bound
        return []

    def scopes(self, at: ast.AST) -> list[ast.AST]:
        """The functions around ``at``, innermost first, then the module."""
        found, node = [], at
        while id(node) in self.parents:
            node = self.parents[id(node)]
            if isinstance(node, FUNCTIONS):
                found.append(node)
        return found + [self.tree]

    def statements(self, scope: ast.AST) -> list[ast.AST]:
        """The nodes of ``scope`` itself, not of the functions and classes nested in it."""
        found, todo = [], list(ast.iter_child_nodes(scope))
        while todo:
            node = todo.pop()
            found.append(node)
            if not isinstance(node, (*FUNCTIONS, ast.ClassDef)):
                todo += ast.iter_child_nodes(node)
        return found


def _assigned(stmt: ast.AST, name: str) -> ast.AST | None:
    """The value of ``name = ...`` / ``name: T = ...`` when ``stmt`` is one."""
    if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
        return stmt.value
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name:
        return stmt.value
    return None


def _resolve(target: str, names: list[str], modules: dict[str, pathlib.Path]) -> set[str]:
    """Project modules an import statement loads (``from pkg import mod`` names a module;
    ``prefix*``, a dynamic import whose name is partly unknown, may load any module it begins)."""
    if target.endswith(ANY):
        return {m for m in modules if m.startswith(target[:-1])}
    hit = {f"{target}.{n}" for n in names if f"{target}.{n}" in modules}
    if target in modules and (not names or len(hit) < len(names)):
        hit.add(target)  # names defined in the module (or package __init__) itself
    return hit


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: _edges(module, _imports(module, path), modules) for module, path in modules.items()}


def _edges(module: str, imports: list[tuple[str, list[str]]], modules: dict[str, pathlib.Path]) -> set[str]:
    """The project modules ``module`` depends on, given its imports."""
    edges: set[str] = set()
    for target, names in imports:
        edges |= _resolve(target, names, modules)
    edges.discard(module)
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle a depth-first walk of ``graph`` meets, as [a, b, ..., a]."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def _matches(name: str, banned: set[str]) -> bool:
    if name.endswith(ANY):  # any module the prefix begins: banned if one of them may be
        prefix = name[:-1]
        return any(b.startswith(prefix) or prefix.startswith(b + ".") for b in banned)
    return any(name == b or name.startswith(b + ".") for b in banned)


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_dependency_direction(folder: str) -> None:
    offenders = []
    for module, path in _modules().items():
        if not module.startswith(FOLDERS[folder]):
            continue
        for target, _ in _imports(module, path):
            if _matches(target, FORBIDDEN[folder]):
                offenders.append(f"{path.relative_to(ROOT)} imports {target}")
    assert offenders == []


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


# A jobs/cli.py in miniature: each command module imported by name from a tuple.
SYNTHETIC_CLI = '''
import importlib

COMMAND_MODULES: tuple[str, ...] = ("scan", "query")


def _register_commands(app):
    for name in COMMAND_MODULES:
        module_name = f"vip2scan.jobs.{name}"
        importlib.import_module(module_name).register(app)
'''


def test_importlib_calls_are_imports() -> None:
    source = SYNTHETIC_CLI + '''

def lazy(kind):
    from importlib import import_module

    views = "vip2scan.pipeline.output.views"
    import_module(views)
    import_module(".config", __package__)
    errors = "vip2scan.pipeline"
    errors = errors + ".errors"
    __import__(errors)
    return importlib.import_module(f"vip2scan.model.{kind()}")


def unknown(spec):
    return importlib.import_module(spec)  # nothing known: no edge
'''
    imports = _imports_in("vip2scan.jobs.cli", source)
    assert {target for target, _ in imports} == {
        "importlib", "vip2scan.jobs.scan", "vip2scan.jobs.query", "vip2scan.pipeline.output.views",
        "vip2scan.jobs.config", "vip2scan.pipeline", "vip2scan.pipeline.errors", "vip2scan.model.*"}
    edges = _edges("vip2scan.jobs.cli", imports, _modules())
    # The unknown field stands for every module under vip2scan.model.
    assert {"vip2scan.model.detector", "vip2scan.model.images", "vip2scan.model.training.step"} <= edges
    assert {"vip2scan.jobs.scan", "vip2scan.jobs.query", "vip2scan.jobs.config",
            "vip2scan.pipeline.output.views", "vip2scan.pipeline.errors"} <= edges


def test_an_importlib_cycle_and_a_wrong_direction_are_caught() -> None:
    modules = _modules()
    graph = {
        "vip2scan.jobs.cli": _edges("vip2scan.jobs.cli", _imports_in("vip2scan.jobs.cli", SYNTHETIC_CLI), modules),
        "vip2scan.jobs.scan": _edges("vip2scan.jobs.scan",
                                     _imports_in("vip2scan.jobs.scan", "from vip2scan.jobs.cli import app\n"),
                                     modules),
    }
    assert _cycles(graph) == [["vip2scan.jobs.cli", "vip2scan.jobs.scan", "vip2scan.jobs.cli"]]

    lazy_model = "import importlib\n\ndef f(x):\n    return importlib.import_module(f'vip2scan.jobs.{x}')\n"
    assert [t for t, _ in _imports_in("vip2scan.model.lazy", lazy_model)
            if _matches(t, FORBIDDEN["model"])] == ["vip2scan.jobs.*"]
    assert _matches("vip2scan.model.*", FORBIDDEN["pipeline"])  # may be vip2scan.model.training
    assert not _matches("vip2scan.model.*", FORBIDDEN["model"])


def test_the_cli_is_seen_to_import_every_command_module() -> None:
    from vip2scan.jobs.cli import COMMAND_MODULES

    assert {f"vip2scan.jobs.{name}" for name in COMMAND_MODULES} <= _graph()["vip2scan.jobs.cli"]


def test_detector_does_no_io_and_weights_is_a_leaf() -> None:
    modules = _modules()
    detector = [t for t, _ in _imports("vip2scan.model.detector", modules["vip2scan.model.detector"])]
    assert [t for t in detector if _matches(t, DETECTOR_FORBIDDEN)] == []
    own = {t for t, _ in _imports("vip2scan.model.weights", modules["vip2scan.model.weights"])
           if t.startswith("vip2scan.")}
    assert own <= WEIGHTS_ALLOWED_OWN


def test_model_errors_import_only_the_top_root() -> None:
    path = _modules()["vip2scan.model.errors"]
    own = {t for t, _ in _imports("vip2scan.model.errors", path) if t.startswith("vip2scan.")}
    assert own <= MODEL_ERRORS_ALLOWED_OWN


def test_commands_do_not_import_each_other() -> None:
    """A command (a module, or the package of one, named in jobs/cli.py's COMMAND_MODULES) takes
    what it shares with others from a shared module (storage.py, formatting.py, report_page.py,
    imaging.py ...), never from another command; only cli.py imports them all."""
    from vip2scan.jobs.cli import COMMAND_MODULES

    commands = {f"{FOLDERS['jobs']}.{name}" for name in COMMAND_MODULES}

    def command_of(module: str) -> str | None:
        return next((c for c in commands if _matches(module, {c})), None)

    offenders = []
    for module, edges in _graph().items():
        mine = command_of(module)
        if mine is None:
            continue
        offenders += [f"{module} imports {target}" for target in sorted(edges)
                      if command_of(target) not in (None, mine)]
    assert offenders == []


def test_only_the_cli_catches_every_exception() -> None:
    """jobs/errors.py's OUTCOMES decides how a failure ends; a command catching Exception would
    decide it a second time (or hide a bug). A command rewording a library's error catches
    that library's class. The one broad handler is the CLI group's last resort."""
    broad = {"Exception", "BaseException"}
    found = []
    for module, path in _modules().items():
        if not module.startswith(FOLDERS["jobs"]):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ExceptHandler):
                caught = [] if node.type is None else (
                    node.type.elts if isinstance(node.type, ast.Tuple) else [node.type])
                names = {ast.unparse(c) for c in caught}
                if node.type is None or names & broad:
                    found.append(str(path.relative_to(ROOT)))
    assert found == ["jobs/cli.py"]


def test_no_private_names_cross_modules() -> None:
    offenders = []
    for module, path in _modules().items():
        for target, names in _imports(module, path):
            if target.startswith("vip2scan."):
                offenders += [f"{path.relative_to(ROOT)}: {target}.{n}" for n in names
                              if n.startswith("_") and not n.startswith("__")]
    assert offenders == []


def test_modules_stay_small() -> None:
    big = {str(p.relative_to(ROOT)): n for p in _modules().values()
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def test_subpackages_import_under_one_name() -> None:
    import vip2scan.jobs
    import vip2scan.model
    import vip2scan.pipeline

    assert pathlib.Path(vip2scan.model.__file__).parent == ROOT / "model"
    assert pathlib.Path(vip2scan.pipeline.__file__).parent == ROOT / "pipeline"
    assert pathlib.Path(vip2scan.jobs.__file__).parent == ROOT / "jobs"


def test_every_subpackage_is_installed() -> None:
    """pyproject lists packages explicitly: a new sub-folder missing there would be left out of a
    wheel (the editable install used by the tests would not notice)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {m for m, p in _modules().items() if p.name == "__init__.py"}
    assert packages - listed == set()


def test_console_script_prints_version() -> None:
    exe = pathlib.Path(sys.executable).parent / "vip2scan"
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"vip2scan {vip2scan.__version__}"
