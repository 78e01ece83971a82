"""Fuzz campaign: hostile messages into policy_node's callbacks and the pure functions under them.

hypothesis generates sequences of events -- camera frames, joint states, instructions, e-stop messages,
reset calls, control ticks and short pauses, valid and hostile (benchmarks/fuzz_oracle.py) -- and plays
them into a real ``PolicyNode``'s subscription callbacks (no executor: called directly, so an exception
is a crash we see). The policy is a stand-in that answers fast and sometimes adversarially. A second
campaign calls the pure functions directly (image/joint-state/instruction conversion, the plausibility
gates, the safety guard, the pointing report).

Every command the node publishes is checked against an oracle that knows only what was sent: inside
the limits, within the step bound (also from where the robot was last reported), never while
e-stopped, never with stale or implausible inputs (the rules: benchmarks/fuzz_oracle.py).

Prints JSON: messages by type, crashes, unsafe commands by rule, chunks and holds published.

    python benchmarks/fuzz_policy_node.py --json                  # >= 10,000 messages
    python benchmarks/fuzz_policy_node.py --examples 20 --json    # a quick run (the test's)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # before rclpy initialises anything
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import rclpy  # noqa: E402
import yaml  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.logging import LoggingSeverity  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402

from benchmarks.fuzz_oracle import CAMERAS, FuzzRunner, Oracle, strategies  # noqa: E402
from policy.errors import InputError  # noqa: E402
from policy.options import parse  # noqa: E402
from ros_nodes.ament import share_directory  # noqa: E402
from ros_nodes.common import decode_string  # noqa: E402
from ros_nodes.convert import image_to_numpy, joint_state_to_vector, numpy_to_image, seconds_to_time  # noqa: E402
from ros_nodes.diagnostics import pointing_status  # noqa: E402
from ros_nodes.estop import reset_request  # noqa: E402
from ros_nodes.plausibility import FreshnessGate, JointPlausibility, Verdict  # noqa: E402
from ros_nodes.policy_node import PolicyNode  # noqa: E402
from ros_nodes.safety import SafetyGuard, SafetyLimits, UnsafeCommand  # noqa: E402
from training.cli import run_command  # noqa: E402

PACE_S = 0.004  # between two events: ~250 messages/s, a busy robot's rate (time must pass for staleness)


def node_campaign(examples: int, seed: int, quiet: bool = True, domain_id: int | None = None) -> dict:
    p = yaml.safe_load((share_directory() / "config" / "sim.yaml").read_text())["policy_node"]["ros__parameters"]
    joints = p["joint_names"]
    lower, upper = np.array(p["position_lower"]), np.array(p["position_upper"])
    dt = 1.0 / p["control_hz"]
    bound = np.minimum(np.array(p["max_step"]), np.array(p["max_velocity"]) * dt)
    margin = np.array(p["joint_limit_margin"])
    home = np.array([0.0, 0.4, 1.5, 1.24, 0.0, 0.0, 0.04])
    oracle = Oracle(p, lower, upper, bound, dt)
    rng = np.random.default_rng(seed)
    counts, crashes, crash_examples = Counter(), Counter(), []
    state = {"position": home.copy(), "pixel": 0, "moved_at": 0.0}

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id if domain_id is not None else int(os.environ.get("ROS_DOMAIN_ID", 77)))
    tmp = Path(tempfile.mkdtemp(prefix="mot-fuzz-"))
    args = ["--ros-args", "--params-file", str(share_directory() / "config" / "sim.yaml"),
            "-p", "cameras:=[front,wrist]", "-p", "lock_memory:=false",
            "-p", f"estop_latch_file:={tmp / 'estop.json'}", "-p", f"estop_token_file:={tmp / 'token'}"]
    node = PolicyNode(runner=FuzzRunner(rng), cli_args=args, context=context)
    if quiet:
        node.get_logger().set_level(LoggingSeverity.FATAL)  # thousands of rejections would flood stderr
    token = (tmp / "token").read_text().strip()
    forward = node.commands._publish

    def record(command):  # runs under the controller's lock, before the real publish
        oracle.check(command.kind, command.points, time.time())
        forward(command)
    node.commands._publish = record

    def now() -> float:
        return node.get_clock().now().nanoseconds * 1e-9

    def raw_string(payload: bytes) -> bytes:
        placeholder = b"\x01" * len(payload)
        return serialize_message(String(data=placeholder.decode())).replace(placeholder, payload)

    def play(event) -> None:
        kind = event[0]
        t = now()
        if kind == "image":
            _, camera, how, data = event
            key = f"camera/{camera}"
            if how == "garbage":
                msg = Image(encoding="rgb8", height=int(rng.integers(0, 70)), width=int(rng.integers(0, 70)),
                            step=int(rng.integers(0, 300)), data=data)
            else:
                state["pixel"] = (state["pixel"] + 1) % 256  # a real camera's frames always differ
                msg = numpy_to_image(np.full((16, 16, 3), state["pixel"], np.uint8))
                stamp = {"valid": t, "old": t - 10.0, "future": t + 10.0, "unstamped": 0.0,
                         "repeat": oracle.last_stamp.get(key, t)}[how]
                msg.header.stamp = seconds_to_time(stamp)
            fresh = how not in ("garbage", "unstamped") and oracle.sent_fresh(key, time_to(msg), t)
            node._on_image(camera, msg)
            if fresh:
                oracle.fresh[key] = time.time()
        elif kind == "joint_state":
            _, how, values = event
            position = state["position"]
            if how == "valid":  # the robot moves toward the last command, no faster than it can
                target = oracle.previous[0] if oracle.previous is not None else position
                step = np.asarray(p["max_velocity"]) * max(t - state["moved_at"], 0.0)
                position = np.clip(position + np.clip(target - position, -step, step), lower, upper)
                state["position"], state["moved_at"] = position, t
                q = position
            elif how == "huge":
                q = position.copy()
                q[int(rng.integers(len(q)))] = 1e6
            elif how == "beyond_margin":
                q = position.copy()
                j = int(rng.integers(len(q)))
                q[j] = upper[j] + 3 * margin[j]
            elif how == "jump":
                q = np.clip(position + 1.5, lower, upper)
            elif how == "nan":
                q = position.copy()
                q[0] = np.nan
            else:
                q = np.array(values if len(values) == len(joints) else position, dtype=np.float64)
            names = list(joints)
            if how == "missing":
                names, q = names[:-1], q[:-1]
            elif how == "extra":
                names, q = names + ["extra_joint"], np.append(q, 0.0)
            msg = JointState(name=names, position=[float(v) for v in q])
            stamp = t - 10.0 if how == "old" else t
            msg.header.stamp = seconds_to_time(stamp)
            # The node converts first (a missing joint or a NaN is malformed), then checks the stamp,
            # then the range: mirror that order, so the oracle knows which stamps the node accepted.
            q = q[:len(joints)]
            with np.errstate(over="ignore"):  # the node plans in float32: 1e300 is inf there, hence malformed
                convertible = how != "missing" and bool(np.all(np.isfinite(q.astype(np.float32))))
            stamp_ok = convertible and oracle.sent_fresh("joint_states", stamp, t)
            in_range = convertible and bool(np.all(q >= lower - margin) and np.all(q <= upper + margin))
            if stamp_ok and in_range:
                oracle.states.append(np.array(q))  # a state the node may legitimately plan from
            node._on_joint_state(msg)
            if stamp_ok and in_range and how != "jump":
                oracle.fresh["joint_states"] = time.time()
            if stamp_ok and not in_range:
                oracle.implausible_at = time.time()
        elif kind == "instruction":
            text = event[1]
            node._on_instruction(raw_string(text) if isinstance(text, bytes) else serialize_message(String(data=text)))
        elif kind == "estop":
            node._on_estop(Bool(data=event[1]))
            if event[1]:
                oracle.latched = True
        elif kind == "reset":
            how = event[1]
            request = reset_request(token) if how == "token" else (
                reset_request("wrong-token-0123456789") if how == "wrong" else SetParameters.Request())
            response = node._on_reset(request, SetParameters.Response())
            if response.results[0].successful:
                oracle.latched = False
        elif kind == "tick":
            node._on_tick()
            if rng.random() < 0.1:  # the reports carry what the stand-in pointed at, hostile or not
                node._publish_diagnostics()
                node._publish_status()
        elif kind == "sleep":
            time.sleep(event[1])

    def time_to(msg) -> float:
        return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(events=strategies(joints, lower, upper))
    def campaign(events):
        for event in events:
            counts[event[0]] += 1
            time.sleep(PACE_S)
            try:
                play(event)
            except Exception as exc:  # any exception out of a callback would end the executor: a crash
                crashes[type(exc).__name__] += 1
                if len(crash_examples) < 5:
                    crash_examples.append(f"{event[0]}: {traceback.format_exc(limit=3)}")
        node._on_tick()  # the control tick runs between bursts, as its timer would

    started = time.perf_counter()
    try:
        campaign()
        time.sleep(0.2)  # let the last inference land (and be checked)
        worker_alive = node._worker.is_alive()
        metrics = node.controller.metrics.summary()
        mode = node.controller.mode
        if not quiet:
            print(json.dumps(node.controller.status(now()), default=str), file=sys.stderr)
    finally:
        node.close()
        node.destroy_node()
        context.try_shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    messages = sum(v for k, v in counts.items() if k not in ("tick", "sleep"))
    return {"messages": messages, "by_type": dict(counts), "crashes": sum(crashes.values()), "crash_types": dict(crashes),
            "crash_examples": crash_examples, "worker_alive": worker_alive,
            "unsafe_commands": sum(oracle.unsafe.values()), "unsafe_by_rule": dict(oracle.unsafe),
            "unsafe_examples": oracle.examples, "published": dict(oracle.published), "final_mode": mode,
            "rejections": metrics["rejections"], "unsafe_chunks_refused": metrics["unsafe_chunks"],
            "faults": metrics["faults"], "discarded_instructions": metrics["discarded_instructions"],
            "inference_calls": node.runner.calls, "wall_s": round(time.perf_counter() - started, 1)}


def pure_campaign(examples: int) -> dict:
    """The conversion / plausibility / guard functions called directly with hostile values."""
    joints = ["a", "b", "c"]
    limits = SafetyLimits(lower=[-1, -2, 0], upper=[1, 2, 0.08], max_step=[0.2, 0.2, 0.02], max_velocity=[2, 2, 0.2], dt=0.1)
    guard = SafetyGuard(limits)
    check = JointPlausibility(limits.lower, limits.upper, 0.05, 4.0, 0.05)
    gate = FreshnessGate(max_age=0.25, max_frozen_s=1.0)
    counts, crashes, unsafe = Counter(), Counter(), Counter()
    floats = st.floats(allow_nan=True, allow_infinity=True)

    def call(name, fn):
        counts[name] += 1
        try:
            return fn()
        except (ValueError, TypeError, UnsafeCommand):  # a refused input: the documented outcome
            return None
        except Exception as exc:
            crashes[f"{name}: {type(exc).__name__}"] += 1
            return None

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(encoding=st.sampled_from(["rgb8", "bgr8", "mono8", "16UC1", "", "yuv422"]), h=st.integers(-2, 70),
           w=st.integers(-2, 70), step=st.integers(-2, 300), data=st.binary(max_size=3000),
           names=st.lists(st.sampled_from(joints + ["x", ""]), max_size=5), positions=st.lists(floats, max_size=5),
           raw=st.binary(max_size=64), chunk=arrays(np.float64, st.tuples(st.integers(0, 6), st.integers(1, 4)),
                                                     elements=floats),
           start=arrays(np.float64, (3,), elements=floats), stamp=floats, now=st.floats(0, 1e9),
           points=st.one_of(st.none(), arrays(np.float64, st.integers(0, 10), elements=floats), st.text(max_size=8)),
           confidence=st.one_of(st.none(), arrays(np.float64, st.integers(0, 6), elements=floats)))
    def campaign(encoding, h, w, step, data, names, positions, raw, chunk, start, stamp, now, points, confidence):
        def image():
            return image_to_numpy(Image(encoding=encoding, height=max(h, 0), width=max(w, 0), step=max(step, 0),
                                        data=data))
        call("image_to_numpy", image)
        q = call("joint_state_to_vector", lambda: joint_state_to_vector(JointState(name=names, position=positions), joints))
        call("decode_string", lambda: decode_string(raw))
        call("freshness", lambda: gate.check("cam", stamp, now, raw[:4]))
        verdict = call("plausibility", lambda: check.check(np.array(positions[:3] + [0.0] * (3 - len(positions[:3]))), now))
        if verdict and verdict[0] is Verdict.ACCEPT and not np.all(np.isfinite(positions[:3])):
            unsafe["accepted_non_finite"] += 1
        safe = call("guard", lambda: guard.apply(chunk, start))
        if safe is not None:
            previous = np.clip(start, limits.lower, limits.upper)
            if np.any(safe < limits.lower - 1e-9) or np.any(safe > limits.upper + 1e-9) or not np.all(np.isfinite(safe)):
                unsafe["joint_limits"] += 1
            if np.any(np.abs(np.diff(np.vstack([previous, safe]), axis=0)) > limits.step_bound + 1e-9):
                unsafe["velocity"] += 1
        report = call("pointing_status", lambda: pointing_status(CAMERAS, points, confidence))
        if not isinstance(report, dict):  # a report the node cannot read is left out, never raised
            crashes["pointing_status: raised"] += 1
        del q

    started = time.perf_counter()
    campaign()
    return {"calls": sum(counts.values()), "by_function": dict(counts), "crashes": sum(crashes.values()),
            "crash_types": dict(crashes), "unsafe_commands": sum(unsafe.values()), "unsafe_by_rule": dict(unsafe),
            "wall_s": round(time.perf_counter() - started, 1)}


@dataclass
class FuzzConfig:
    examples: int = 500
    """hypothesis examples of the node campaign (10-120 events each)"""
    pure_examples: int | None = None
    """pure-function examples (default: 4 x --examples)"""
    seed: int = 0
    """the stand-in policy's seed (hypothesis itself is derandomized)"""
    json: bool = False
    """print only the JSON result"""

    def __post_init__(self) -> None:
        for name in ("examples", "pure_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"{name}: expected an int >= 1, received {value}")


def main(argv: list[str] | None = None) -> int:
    args = parse(FuzzConfig, argv, "python benchmarks/fuzz_policy_node.py", __doc__.split("\n\n")[0])
    node = node_campaign(args.examples, args.seed, quiet=args.json)
    pure = pure_campaign(args.pure_examples if args.pure_examples is not None else 4 * args.examples)
    result = {"benchmark": "fuzz_policy_node", "node": node, "pure": pure,
              "messages_total": node["messages"] + pure["calls"],
              "crashes_total": node["crashes"] + pure["crashes"] + (0 if node["worker_alive"] else 1),
              "unsafe_commands_total": node["unsafe_commands"] + pure["unsafe_commands"]}
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":  # as a script too: a mistake is one line and exit 2, as under `mot bench`
    sys.exit(run_command("bench fuzz_policy_node", main, sys.argv[1:]))
