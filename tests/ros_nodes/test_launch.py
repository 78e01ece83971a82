"""Launch files, checked statically (launch / launch_ros are not installable from PyPI).

Each launch file must compile, start only executables this package installs, give each node only
parameters that node declares (from the YAML and inline dicts), and agree with `mot stack`.
"""

import ast
import importlib
import tomllib
from pathlib import Path

import pytest
import yaml

from ros_nodes.stack import GRAPHS, OPTIONAL

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def node_calls(path: Path) -> list[dict]:
    """Every `Node(...)` in a launch file as {executable, name, package, yaml, inline_params}."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = []
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Node"):
            continue
        kw = {k.arg: k.value for k in call.keywords}
        inline = []
        for item in getattr(kw.get("parameters"), "elts", []):
            if isinstance(item, ast.Dict):
                inline += [k.value for k in item.keys]
        nodes.append({key: kw[key].value for key in ("package", "executable", "name")} | {"inline": inline})
    return nodes


def declared(executable: str) -> set[str]:
    module = importlib.import_module(SCRIPTS[executable].split(":")[0])
    return set(module.PARAMETERS)


def yaml_for(path: Path) -> dict:
    return yaml.safe_load((ROOT / "launch" / "config" / path.name.replace(".launch.py", ".yaml")).read_text())


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_compiles_and_names_real_executables_and_parameters(path):
    compile(path.read_text(), str(path), "exec")
    assert "def generate_launch_description" in path.read_text()
    nodes = node_calls(path)
    assert nodes, "a launch file starts at least one node"
    params = yaml_for(path)
    for node in nodes:
        assert node["package"] == "mot_policy"
        assert node["executable"] in SCRIPTS, f"{node['executable']} is not a console script of the package"
        known = declared(node["executable"])
        unknown_inline = set(node["inline"]) - known
        assert not unknown_inline, f"{node['name']}: undeclared parameters {unknown_inline}"
        from_yaml = set(params.get(node["name"], {}).get("ros__parameters", {}))
        assert not from_yaml - known, f"{node['name']}: YAML sets undeclared parameters {from_yaml - known}"
    # Every YAML section is used by a node of this launch file (no dead configuration).
    assert set(params) <= {n["name"] for n in nodes}


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_mot_stack_starts_the_launch_files_nodes(graph):
    launched = {(n["name"], n["executable"]) for n in node_calls(ROOT / "launch" / f"{graph}.launch.py")}
    stacked = {(name, spec.split(":")[0].split(".")[-1]) for name, spec in [*GRAPHS[graph], *OPTIONAL.items()]}
    assert {n for n, _ in launched} - {n for n, _ in stacked} == set()
    for name, executable in launched:
        assert SCRIPTS[executable].split(":")[0] == next(s for n, s in [*GRAPHS[graph], *OPTIONAL.items()]
                                                           if n == name).split(":")[0]


def test_sim_yaml_limits_match_the_sim():
    sim = pytest.importorskip("sim")
    params = yaml_for(ROOT / "launch" / "sim.launch.py")["policy_node"]["ros__parameters"]
    assert params["joint_names"] == list(sim.JOINT_NAMES)
    assert params["position_lower"] == pytest.approx(sim.ACTION_LOW.tolist(), abs=1e-6)
    assert params["position_upper"] == pytest.approx(sim.ACTION_HIGH.tolist(), abs=1e-6)
