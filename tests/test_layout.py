"""The package layout and the dependency rules the architecture promises (see README, Layout).

Every import counts, top-level or inside a function (a lazy import is still a dependency);
only ``if TYPE_CHECKING:`` blocks are exempt, since they never run.
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
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_nodes(tree)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
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
    return found


def _resolve(target: str, names: list[str], modules: dict[str, pathlib.Path]) -> set[str]:
    """Project modules an import statement loads (``from pkg import mod`` names a module)."""
    hit = {f"{target}.{n}" for n in names if f"{target}.{n}" in modules}
    if target in modules and (not names or len(hit) < len(names)):
        hit.add(target)  # names defined in the module (or package __init__) itself
    return hit


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        edges: set[str] = set()
        for target, names in _imports(module, path):
            edges |= _resolve(target, names, modules)
        edges.discard(module)
        graph[module] = edges
    return graph


def _matches(name: str, banned: set[str]) -> bool:
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
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


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
