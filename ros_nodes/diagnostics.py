"""policy_node's health as ``diagnostic_msgs/DiagnosticArray`` on ``/diagnostics``, as ros2 tools expect.

One ``DiagnosticStatus`` per node (name ``"<node>: policy"``, the diagnostic_updater convention), its
level OK / WARN / ERROR from the controller's status, a one-line message, and ``KeyValue`` entries
(strings, as the message defines them) for the mode, the e-stop, input ages, inference latency and
rejection counts. ``ros2 topic echo /diagnostics``, rqt_robot_monitor and diagnostic_aggregator read
it unchanged. ``assess`` is pure (a status dict in, level + message + pairs out) and tested alone.
"""

from __future__ import annotations

import math

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
    return level, message, [(key, _text(value)) for key, value in pairs]


def diagnostic_array(name: str, hardware_id: str, status: dict, new_rejections: int, stamp) -> DiagnosticArray:
    level, message, pairs = assess(status, new_rejections)
    entry = DiagnosticStatus(level=bytes([level]), name=name, message=message, hardware_id=hardware_id,
                             values=[KeyValue(key=k, value=v) for k, v in pairs])
    array = DiagnosticArray(status=[entry])
    array.header.stamp = stamp
    return array
