"""policy_node's health as ``diagnostic_msgs/DiagnosticArray`` on ``/diagnostics``, as ros2 tools expect.

One ``DiagnosticStatus`` per node (name ``"<node>: policy"``, the diagnostic_updater convention), its
level OK / WARN / ERROR from the controller's status, a one-line message, and ``KeyValue`` entries
(strings, as the message defines them) for the mode, the e-stop, input ages, inference latency and
rejection counts, and, for a policy that points (target points), where it pointed on its latest plan and
how confident its grounding head was (``pointing_status``; reported only: the level never depends on it).
``ros2 topic echo /diagnostics``, rqt_robot_monitor and diagnostic_aggregator read it unchanged.
``assess`` and ``pointing_status`` are pure and tested alone.
"""

from __future__ import annotations

import math

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

OK, WARN, ERROR = 0, 1, 2  # DiagnosticStatus.OK/WARN/ERROR (bytes in the message, ints here)


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    if value is None:
        return "never"
    return str(value)


def pointing_status(cameras: tuple[str, ...], points, confidence) -> dict:
    """A runner's ``last_points`` (4 * cams,: object (u, v) per camera, then pad) and ``last_confidence``
    (2 * cams,: object per camera, then pad) -> {camera: {"object_uv", "pad_uv", "object_confidence",
    "pad_confidence"}} with plain floats (JSON). Anything else (no points, a policy without target points,
    wrong shapes, non-finite values) -> {}: a report that cannot be read is left out, never raised."""
    n = len(cameras)
    try:
        uv = np.asarray(points, dtype=np.float64)
        conf = np.full(2 * n, np.nan) if confidence is None else np.asarray(confidence, dtype=np.float64)
    except (TypeError, ValueError):
        return {}
    if points is None or n == 0 or uv.shape != (4 * n,) or conf.shape != (2 * n,) or not np.isfinite(uv).all():
        return {}
    uv = uv.reshape(2, n, 2)  # (object, pad) x camera x (u, v)
    out = {}
    for i, camera in enumerate(cameras):
        out[camera] = {"object_uv": [round(float(x), 4) for x in uv[0, i]],
                       "pad_uv": [round(float(x), 4) for x in uv[1, i]]}
        for k, target in enumerate(("object", "pad")):
            if np.isfinite(conf[k * n + i]):
                out[camera][f"{target}_confidence"] = round(float(conf[k * n + i]), 4)
    return out


def assess(status: dict, new_rejections: int = 0) -> tuple[int, str, list[tuple[str, str]]]:
    """A ``PolicyController.status()`` dict -> (level, message, [(key, value), ...]).

    ERROR: a fault, an inference error, or an e-stop latch that could not be written to disk.
    WARN: the e-stop is latched, the node holds (stale or implausible inputs), or messages were
    rejected since the last report. OK otherwise (idle and running).
    """
    mode = status["mode"]
    level, message = OK, mode
    if status.get("fault"):
        level, message = ERROR, f"fault: {status['fault']}"
    elif mode == "error":
        level, message = ERROR, f"error: {status.get('error', '')}"
    elif status.get("estop_persist_error"):
        level, message = ERROR, f"e-stop latch not persisted: {status['estop_persist_error']}"
    elif status.get("estop"):
        level, message = WARN, f"e-stop latched ({status.get('estop_reason', '')})"
    elif mode == "hold":
        level, message = WARN, f"holding: stale or implausible inputs {status.get('stale', [])}"
    elif new_rejections:
        level, message = WARN, f"{mode}; {new_rejections} message(s) rejected in the last period"
    inference, latency = status.get("inference", {}), status.get("latency", {})
    pairs = [("mode", mode), ("estop", status.get("estop")), ("estop_reason", status.get("estop_reason", "")),
             ("estop_persisted", status.get("estop_persisted")), ("instruction", status.get("instruction", "")),
             ("pending_instruction", status.get("pending_instruction", "")), ("error", status.get("error", "")),
             ("fault", status.get("fault", "")), ("dry_run", status.get("dry_run")),
             ("stale_inputs", ",".join(status.get("stale", [])))]
    pairs += [(f"input_age_s/{name}", age) for name, age in sorted(status.get("input_age_s", {}).items())]
    pairs += [(f"stamp_delay_s/{name}", delay) for name, delay in sorted(status.get("stamp_delay_s", {}).items())]
    pairs += [("inference_ms/last", inference.get("last_ms")), ("inference_ms/median", inference.get("median_ms")),
              ("inference_ms/p99", inference.get("p99_ms")), ("latency_ms/p99", latency.get("p99_ms")),
              ("chunks", status.get("chunks")), ("holds", status.get("holds")),
              ("starved_ticks", status.get("starved_ticks")), ("unsafe_chunks", status.get("unsafe_chunks")),
              ("rejected_messages", status.get("rejected_messages")),
              ("discarded_instructions", status.get("discarded_instructions")),
              ("refused_resets", status.get("refused_resets")), ("faults", status.get("faults"))]
    pairs += [(f"rejected/{kind}", count) for kind, count in sorted(status.get("rejections", {}).items())]
    pairs += [(f"last_rejection/{kind}", text) for kind, text in sorted(status.get("last_rejection", {}).items())]
    for camera, point in sorted(status.get("pointing", {}).items()):  # reported only: no effect on the level
        pairs += [(f"pointing/{camera}/{key}", ",".join(f"{x:.3f}" for x in value) if isinstance(value, list) else value)
                  for key, value in point.items()]
    return level, message, [(key, _text(value)) for key, value in pairs]


def diagnostic_array(name: str, hardware_id: str, status: dict, new_rejections: int, stamp) -> DiagnosticArray:
    level, message, pairs = assess(status, new_rejections)
    entry = DiagnosticStatus(level=bytes([level]), name=name, message=message, hardware_id=hardware_id,
                             values=[KeyValue(key=k, value=v) for k, v in pairs])
    array = DiagnosticArray(status=[entry])
    array.header.stamp = stamp
    return array
