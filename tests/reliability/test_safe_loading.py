"""Checkpoints and weights load only through safetensors or torch.load(weights_only=True);
TorchScript only through the explicit convert; a config naming an unknown backbone or
tensors of the wrong shape is refused. A pickle that would run code on load never runs it."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest
import torch

from vip2scan.model.weights import CheckpointError
from vip2scan.model.detector import Detector
from vip2scan.pipeline import ScanError, ScanOptions, scan

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("model", "pipeline", "jobs", "vip2scan_pkg")
# The one sanctioned TorchScript loader: the explicit, opt-in conversion.
JIT_LOAD_ALLOWED = {("model/weights.py", "convert_openai_weights"), ("jobs/convert.py", "convert")}
# Unpickling allowed only of what this program sent itself: the reader child's group request
# arrives on the child's own stdin pipe from the parent that started it (the trust model of
# multiprocessing), never from a file, the store or the network.
PICKLE_LOAD_ALLOWED = {("pipeline/stages/reader.py", "serve_group")}


class RunsCodeOnUnpickle:
    """A pickle payload: unpickling it calls os.system (here: creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_pth(path: Path, marker: Path) -> Path:
    torch.save({"prompt_learner": {"ctx_pos": RunsCodeOnUnpickle(marker)},
                "Zero_try": {}}, path)
    return path


def _torchscript(path: Path) -> Path:
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    return path


def test_a_pickle_that_runs_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = _evil_pth(tmp_path / "evil.pth", marker)
    with pytest.raises(CheckpointError, match="refused to load"):
        Detector.from_checkpoint(str(evil))
    from vip2scan.model.weights import load_state_dict_file

    with pytest.raises(CheckpointError, match="refused to load"):
        load_state_dict_file(str(evil))  # the path backbone --weights files take
    assert not marker.exists()


def test_scan_with_a_code_running_checkpoint_fails_fast_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = _evil_pth(tmp_path / "evil.pth", marker)
    (tmp_path / "lake").mkdir()
    with pytest.raises(ScanError, match="cannot load checkpoint .*refused to load"):
        scan(str(tmp_path / "lake"), str(tmp_path / "out"), str(evil), ScanOptions())
    assert not marker.exists() and not (tmp_path / "out" / "_lock").exists()


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_torchscript_is_refused_outside_convert(tmp_path, checkpoint_copy):
    archive = _torchscript(tmp_path / "openai.pt")
    with pytest.raises(CheckpointError, match="TorchScript"):
        Detector.from_checkpoint(str(archive))
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["weights"] = str(archive)  # as backbone weights
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="TorchScript.*convert"):
        Detector.from_checkpoint(str(checkpoint_copy))


def test_unknown_backbone_in_a_checkpoint_config_is_refused(checkpoint_copy):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["backbone"] = "ViT-Evil-99"
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown backbone 'ViT-Evil-99'"):
        Detector.from_checkpoint(str(checkpoint_copy))


def test_mismatched_shapes_are_refused(checkpoint_copy):
    from safetensors.torch import load_file, save_file

    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["n_ctx"] = int(config.get("n_ctx") or 7) + 5  # config no longer fits the tensors
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        Detector.from_checkpoint(str(checkpoint_copy))

    config["n_ctx"] -= 5
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(checkpoint_copy / "weights.safetensors"))
    name = next(k for k in sorted(tensors) if tensors[k].dim() >= 2)
    tensors[name] = torch.zeros(*[s + 3 for s in tensors[name].shape])
    save_file(tensors, str(checkpoint_copy / "weights.safetensors"))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        Detector.from_checkpoint(str(checkpoint_copy))


def _calls(tree: ast.AST):
    """(dotted callee, call node, enclosing function name) for every call in a module."""
    def walk(node: ast.AST, function: str):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                else function
            if isinstance(child, ast.Call):
                yield ast.unparse(child.func), child, function
            yield from walk(child, inner)
    yield from walk(tree, "")


def unsafe_loads(rel: str, source: str) -> list[str]:
    """Unsafe deserialisation calls in one module's source."""
    offences = []
    for callee, call, function in _calls(ast.parse(source)):
        keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
        where = f"{rel}:{call.lineno} in {function or '<module>'}"
        if callee.endswith("torch.load") and keywords.get("weights_only") != "True":
            offences.append(f"{where}: torch.load without weights_only=True")
        if callee.endswith("jit.load") and (rel, function) not in JIT_LOAD_ALLOWED:
            offences.append(f"{where}: torch.jit.load outside the convert path")
        if callee in ("pickle.load", "pickle.loads", "cloudpickle.loads", "dill.loads") \
                and (rel, function) not in PICKLE_LOAD_ALLOWED:
            offences.append(f"{where}: {callee}")
        if keywords.get("allow_pickle") == "True":
            offences.append(f"{where}: allow_pickle=True")
        if callee == "yaml.load" and "SafeLoader" not in keywords.get("Loader", ""):
            offences.append(f"{where}: yaml.load without SafeLoader")
    return offences


def test_the_source_check_catches_unsafe_calls():
    bad = ("import torch, pickle, yaml, numpy as np\n"
           "def load(f):\n"
           "    a = torch.load(f)\n"
           "    b = torch.load(f, weights_only=False)\n"
           "    c = torch.jit.load(f)\n"
           "    d = pickle.loads(f.read())\n"
           "    e = np.load(f, allow_pickle=True)\n"
           "    return yaml.load(f)\n")
    assert len(unsafe_loads("model/x.py", bad)) == 6
    assert unsafe_loads("model/x.py", "import torch\ntorch.load(f, weights_only=True)\n") == []


def test_no_unsafe_deserialisation_in_the_sources():
    """Every torch.load passes weights_only=True; torch.jit.load only in the convert paths;
    no pickle.load(s), no numpy allow_pickle, no yaml.load without a safe loader."""
    offences = []
    for folder in SOURCE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            offences += unsafe_loads(str(path.relative_to(REPO)), path.read_text())
    assert offences == []


def test_scan_with_truncated_weights_fails_before_taking_the_lock(tmp_path, checkpoint_copy):
    weights = checkpoint_copy / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    (tmp_path / "lake").mkdir()
    with pytest.raises(ScanError, match="cannot load checkpoint .*outside the file"):
        scan(str(tmp_path / "lake"), str(tmp_path / "out" / "night"), str(checkpoint_copy), ScanOptions())
    # Nothing was written: not even the OUT folder (and its parent) that the probe created.
    assert not (tmp_path / "out").exists()
