"""The import graph follows DESIGN's arrows and has no cycle (imports inside functions count too).

Packages: policy (the model) and sim (the simulator) import nothing of the project but themselves;
training -> policy, sim; ros_nodes -> policy, sim. Inside policy/ every module imports only the ones
before it in POLICY_LAYERS.
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("policy", "sim", "training", "ros_nodes")
ALLOWED = {"policy": {"policy"}, "sim": {"sim"}, "training": {"training", "policy", "sim"},
           "ros_nodes": {"ros_nodes", "policy", "sim"}}
POLICY_LAYERS = ["errors", "artifacts", "signing", "options", "config", "normalize", "inputs", "attention", "experts", "language", "vision",
                 "model", "checkpoint", "pointing", "export", "backends", "tensorrt", "runtime", "cli", "__init__"]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> set[str]:
    """Project modules `path` imports, anywhere in the file (module level, functions, if-blocks)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = {f"{node.module}.{a.name}" for a in node.names if is_module(f"{node.module}.{a.name}")}
            # `from policy import export` imports the module policy.export; `from policy import MoTPolicy`,
            # the package's __init__.
            found |= modules or {node.module}
    return {m for m in found if m.split(".")[0] in PACKAGES}


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
