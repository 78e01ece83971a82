"""Python 3.10 (JetPack 6 / ROS 2 Humble): policy/ and ros_nodes/ stay 3.10-clean.

Three checks:
- no 3.11+ standard-library names (tomllib, typing.Self, ExceptionGroup, asyncio.TaskGroup, enum.StrEnum, ...):
  an AST scan, on whatever Python runs the suite;
- with pyenv's 3.10 (`~/.pyenv/versions/3.10.*/bin/python`, see `pyenv versions`): every file of policy/ and
  ros_nodes/ byte-compiles under it (3.11 syntax such as `except*` or `*args` in subscripts fails there), in
  memory, without writing __pycache__ into the tree;
- with that 3.10 and only its standard library (`-S -I`: no site-packages, no user site, no PYTHON* variables),
  the torch-free modules policy.errors, policy.artifacts and policy.config import and work.

Skipped, with the reason, where no 3.10 is installed. The runtime's own torch-free check (PolicyRunner on
onnxruntime and TensorRT where importing torch fails) is tests/policy/test_torch_free_runtime.py; it needs
onnxruntime, tokenizers and cryptography, which a bare 3.10 does not have.
"""

from __future__ import annotations

import ast
import glob
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKED = ("policy", "ros_nodes")
STDLIB_ONLY = ("policy.errors", "policy.artifacts", "policy.config")

# Standard-library names added in 3.11 or later (module -> names; None: the whole module is new).
NEW_IN_311 = {
    "tomllib": None,
    "wsgiref.types": None,
    "typing": {"Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type", "TypeVarTuple",
               "Unpack", "Required", "NotRequired", "dataclass_transform", "get_overloads", "clear_overloads",
               "override", "TypeAliasType", "ReadOnly", "TypeIs", "get_protocol_members", "is_protocol"},
    "asyncio": {"TaskGroup", "timeout", "timeout_at", "Runner", "Barrier"},
    "enum": {"StrEnum", "ReprEnum", "verify", "member", "nonmember", "global_enum", "EnumCheck", "FlagBoundary",
             "show_flag_values", "property", "EnumType"},
    "datetime": {"UTC"},
    "hashlib": {"file_digest"},
    "contextlib": {"chdir"},
    "operator": {"call"},
    "itertools": {"batched"},
    "inspect": {"markcoroutinefunction", "getmembers_static"},
    "logging": {"getLevelNamesMapping"},
}
NEW_BUILTINS = {"ExceptionGroup", "BaseExceptionGroup"}
NEW_METHODS = {"add_note"}  # BaseException.add_note (3.11)


def _files():
    return sorted(p for pkg in CHECKED for p in (REPO / pkg).rglob("*.py"))


def _uses_of_new_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    aliases: dict[str, str] = {}  # local name -> module ("import typing as t" -> t: typing)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in NEW_IN_311 and NEW_IN_311[a.name] is None:
                    found.append(f"import {a.name}")
                aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            new = NEW_IN_311.get(node.module, set())
            if new is None:
                found.append(f"from {node.module} import ...")
            else:
                found += [f"from {node.module} import {a.name}" for a in node.names if a.name in new]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = aliases.get(node.value.id)
            if module and node.attr in (NEW_IN_311.get(module) or set()):
                found.append(f"{module}.{node.attr}")
            if node.attr in NEW_METHODS:
                found.append(f".{node.attr}()")
        elif isinstance(node, ast.Name) and node.id in NEW_BUILTINS:
            found.append(node.id)
        elif type(node).__name__ == "TryStar":
            found.append("except*")
    return [f"{path.relative_to(REPO)}:{u}" for u in found]


def test_no_standard_library_names_newer_than_310():
    uses = [u for path in _files() for u in _uses_of_new_names(path)]
    assert not uses, uses


def _python310() -> str | None:
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10.*/bin/python")))
    return found[-1] if found else None


def _run310(code: str) -> subprocess.CompletedProcess:
    python = _python310()
    if python is None:
        pytest.skip("no Python 3.10 (expected ~/.pyenv/versions/3.10.*/bin/python; `pyenv install 3.10`)")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/"), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([python, "-S", "-I", "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def test_policy_and_ros_nodes_byte_compile_under_python310():
    code = f"""
import pathlib, sys
assert sys.version_info[:2] == (3, 10), sys.version
bad = []
for pkg in {list(CHECKED)!r}:
    for path in sorted(pathlib.Path({str(REPO)!r}, pkg).rglob("*.py")):
        try:
            compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        except SyntaxError as e:
            bad.append(f"{{path}}:{{e.lineno}}: {{e.msg}}")
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""
    done = _run310(code)
    assert done.returncode == 0, done.stdout + done.stderr


def test_torch_free_modules_import_under_python310_with_only_the_stdlib():
    """policy/__init__ loads its exports lazily, so `import policy.config` does not pull in torch; a module that
    needed anything beyond the stdlib would fail here (no site-packages at all)."""
    code = f"""
import importlib, json, sys, tempfile
sys.path.insert(0, {str(REPO)!r})
for name in {list(STDLIB_ONLY)!r}:
    importlib.import_module(name)
assert "torch" not in sys.modules and "numpy" not in sys.modules, sorted(sys.modules)
from policy.artifacts import atomic_write_json, sha256_file
from policy.config import PolicyConfig
from policy.errors import InputError
cfg = PolicyConfig.preset("small")
assert PolicyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
try:
    PolicyConfig(horizon=0)
except InputError as e:
    assert "horizon" in str(e)
else:
    raise AssertionError("PolicyConfig(horizon=0) was accepted")
with tempfile.TemporaryDirectory() as d:
    path = atomic_write_json(d + "/x.json", {{"a": 1}})
    assert len(sha256_file(path)) == 64
print(sys.version.split()[0], "ok")
"""
    done = _run310(code)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr
