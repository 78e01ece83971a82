"""benchmarks/fuzz_policy_node.py on a small budget: no crash, no unsafe command, and it did plan.

The full campaign (>= 10,000 messages) is `python benchmarks/fuzz_policy_node.py --json`."""

import importlib.util
import sys
from pathlib import Path

from tests.ros_nodes.conftest import next_domain_id

ROOT = Path(__file__).resolve().parents[2]


def _campaign():
    spec = importlib.util.spec_from_file_location("fuzz_policy_node", ROOT / "benchmarks" / "fuzz_policy_node.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its config dataclass looks its module up there (as `mot bench` loads scripts)
    spec.loader.exec_module(module)
    return module


def test_a_small_fuzz_campaign_finds_no_crash_and_no_unsafe_command():
    fuzz = _campaign()
    node = fuzz.node_campaign(examples=25, seed=1, domain_id=next_domain_id())
    assert node["messages"] > 500 and node["crashes"] == 0 and node["worker_alive"], node["crash_examples"]
    assert node["unsafe_commands"] == 0, node["unsafe_examples"]
    assert node["published"].get("chunk", 0) > 0 and node["published"].get("hold", 0) > 0, node["published"]
    pure = fuzz.pure_campaign(examples=150)
    assert pure["crashes"] == 0 and pure["unsafe_commands"] == 0, pure
