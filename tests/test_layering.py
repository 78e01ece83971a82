"""The import graph follows DESIGN's arrows and has no cycle (imports inside functions count too).

Packages: policy (the model) and sim (the simulator) import nothing of the project but themselves;
training -> policy, sim; ros_nodes -> policy, sim. Inside policy/ every module imports only the ones
before it in POLICY_LAYERS.

Lazy references count as imports: a string literal "policy.module:Name" (resolved on first use by policy/lazy.py, so
that a torch-free module can name a torch one without importing it) is an edge to policy.module like an import.
(training/cli.py's "module:function" command table is a dispatch table of entry points, not counted.)
TORCH_FREE lists the modules the torch-free runtime runs on: neither they nor anything they import eagerly (module
level, transitively) imports torch or the training code; only lazy references may lead from them to such modules.
"""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("policy", "sim", "training", "ros_nodes")
ALLOWED = {"policy": {"policy"}, "sim": {"sim"}, "training": {"training", "policy", "sim"},
           "ros_nodes": {"ros_nodes", "policy", "sim"}}
POLICY_LAYERS = ["errors", "artifacts", "signing", "options", "lazy", "config", "normalize", "validation", "sampling",
                 "text", "manifest", "graphs", "spec", "inputs", "attention", "experts", "grounding", "mpnet", "language", "vision",
                 "stages", "model", "checkpoint", "export", "torch_backend", "backends", "cuda", "tensorrt", "runtime", "cli",
                 "__init__"]
# What PolicyRunner with the onnxruntime / tensorrt backend imports (policy/runtime.py's docstring): exactly the
# eager-import closure of policy.runtime and the package.
TORCH_FREE = ["policy." + m for m in ("errors", "artifacts", "signing", "lazy", "config", "normalize", "validation",
                                       "sampling", "text", "manifest", "graphs", "spec", "backends", "cuda", "tensorrt",
                                       "runtime")] + ["policy"]
LAZY = re.compile(r"^(policy(?:\.\w+)+):\w+$")  # "policy.module:Name" (policy/lazy.py)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imported(node) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        modules = {f"{node.module}.{a.name}" for a in node.names if is_module(f"{node.module}.{a.name}")}
        # `from policy import export` imports the module policy.export; `from policy import MoTPolicy`,
        # the package's __init__.
        return modules or {node.module}
    return set()


def lazy_references(path: Path) -> set[str]:
    """Modules named by "policy.module:Name" string literals (policy/lazy.py) anywhere in the file."""
    return {m.group(1) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (m := LAZY.match(node.value))}


def imports(path: Path) -> set[str]:
    """Project modules `path` imports, anywhere in the file (module level, functions, if-blocks), and the ones its
    lazy references name."""
    found = set().union(*(_imported(node) for node in ast.walk(ast.parse(path.read_text())))) | lazy_references(path)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def eager_imports(path: Path) -> set[str]:
    """Every module (project or not) `path` imports when it is imported: module-level statements, if/try blocks
    included, function and class bodies not (those run later, e.g. onnxruntime inside a backend's __init__)."""
    found: set[str] = set()

    def visit(body):
        for node in body:
            found.update(_imported(node))
            if isinstance(node, (ast.If, ast.Try)):
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(node, block, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text()).body)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    return {name: {m for m in imports(path) if m in files and m != name} for name, path in files.items()}


def test_packages_import_only_along_the_arrows():
    wrong = [(a, b) for a, targets in graph().items() for b in targets
             if b.split(".")[0] not in ALLOWED[a.split(".")[0]]]
    assert not wrong, wrong


def test_policy_modules_import_only_lower_layers():
    order = {name: i for i, name in enumerate(POLICY_LAYERS)}
    g = graph()
    unknown = sorted(m for m in g if m.startswith("policy.") and m.split(".")[1] not in order)
    assert not unknown, f"add these modules to POLICY_LAYERS: {unknown}"
    layer = lambda m: order["__init__" if m == "policy" else m.split(".")[1]]  # noqa: E731
    wrong = [(a, b) for a, targets in g.items() if a.split(".")[0] == "policy"
             for b in targets if b.split(".")[0] == "policy" and layer(b) >= layer(a)]
    assert not wrong, wrong


def test_there_is_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])


def test_no_product_file_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for pkg in PACKAGES + ("benchmarks",) for p in (REPO / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_lazy_references_name_real_modules_and_the_torch_free_runtime_imports_no_torch():
    files = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    refs = {m for p in files.values() for m in lazy_references(p)}
    assert {"policy.torch_backend", "policy.checkpoint", "policy.export", "policy.model"} <= refs, refs
    assert all(m in files for m in refs), sorted(refs - set(files))
    # Eagerly imported closure of the runtime: no torch, no training, no torch module of policy/.
    seen, todo, bad = set(), ["policy.runtime", "policy"], []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for m in eager_imports(files[name]):
            if m.split(".")[0] in ("torch", "training", "safetensors") or m.startswith("safetensors.torch"):
                bad.append((name, m))
            elif m in files:
                todo.append(m)
    assert not bad, bad
    assert seen == set(TORCH_FREE), (f"the runtime imports {sorted(seen - set(TORCH_FREE))} too, and no longer "
                                     f"{sorted(set(TORCH_FREE) - seen)}: update TORCH_FREE and policy/runtime.py's docstring")
