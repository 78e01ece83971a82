"""The e-stop reset token and the /diagnostics status, without a ROS graph."""

import json
import stat

import numpy as np
import pytest

from policy.errors import InputError
from ros_nodes.diagnostics import ERROR, OK, WARN, assess, diagnostic_array, pointing_status
from ros_nodes.estop import (ensure_token, main as estop_main, read_token, reset_request, token_file_warning,
                             token_from_request, token_matches)
from training.cli import main as mot


def test_a_token_file_is_created_private_once_and_read_back(tmp_path):
    path = tmp_path / "cfg" / "estop_token"
    token, created = ensure_token(path)
    assert created and len(token) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token(path) == (token, False) and read_token(path) == token
    assert token_file_warning(path) == ""
    path.chmod(0o644)
    assert "chmod 600" in token_file_warning(path)


def test_a_short_or_missing_token_file_is_refused(tmp_path):
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ValueError, match="at least 16"):
        read_token(tmp_path / "short")
    with pytest.raises(ValueError, match="readable"):
        read_token(tmp_path / "missing")


def test_only_the_exact_token_matches():
    token = b"s3cret-token-0123456789"
    assert token_matches(token, "s3cret-token-0123456789") and token_matches(token, " s3cret-token-0123456789\n")
    assert not token_matches(token, "s3cret-token-012345678") and not token_matches(token, "")
    assert not token_matches(None, "anything") and not token_matches(b"", "")


def test_mot_estop_dispatches_reset_and_token_and_refuses_mistakes_in_one_line(tmp_path, capsys):
    assert estop_main([]) == 0 and "mot estop {reset,token}" in capsys.readouterr().out
    assert estop_main(["token", str(tmp_path / "t")]) == 0 and "(created)" in capsys.readouterr().out
    with pytest.raises(InputError, match="expected a subcommand 'reset' or 'token', received 'resett'"):
        estop_main(["resett"])
    with pytest.raises(InputError, match="timeout: expected seconds > 0"):
        estop_main(["reset", "--timeout", "0"])
    assert mot(["estop", "reset", "--token-file", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mot estop: ") and "\n" not in err, err
    assert "token_file: expected a path to the token file, received an empty string" in err, err


def test_the_reset_request_carries_exactly_one_string_token():
    from rcl_interfaces.msg import Parameter, ParameterValue
    from rcl_interfaces.srv import SetParameters

    assert token_from_request(reset_request("abc")) == "abc"
    assert token_from_request(SetParameters.Request()) is None
    two = reset_request("abc")
    two.parameters.append(Parameter(name="token", value=ParameterValue(type=4, string_value="x")))
    assert token_from_request(two) is None
    wrong_type = SetParameters.Request(parameters=[Parameter(name="token", value=ParameterValue(type=2, integer_value=1))])
    assert token_from_request(wrong_type) is None


STATUS = {"mode": "running", "estop": False, "estop_reason": "", "estop_persisted": True, "estop_persist_error": "",
          "error": "", "fault": "", "stale": [], "dry_run": False, "input_age_s": {"camera/front": 0.05, "joint_states": None},
          "stamp_delay_s": {"camera/front": 0.012}, "instruction": "pick", "pending_instruction": "",
          "inference": {"n": 3, "median_ms": 80.0, "p99_ms": 95.0, "max_ms": 96.0, "last_ms": 81.0},
          "latency": {"n": 3, "p99_ms": 99.0}, "chunks": 3, "holds": 0, "starved_ticks": 0, "unsafe_chunks": 0,
          "rejected_messages": 2, "rejections": {"jump": 2}, "last_rejection": {"jump": "joint 0 jumped"},
          "discarded_instructions": 0, "refused_resets": 0, "faults": 0}


@pytest.mark.parametrize("change,new,level,words", [
    ({}, 0, OK, "running"), ({}, 2, WARN, "rejected"),
    ({"mode": "hold", "stale": ["camera/front"]}, 0, WARN, "holding"),
    ({"mode": "estop", "estop": True, "estop_reason": "estop topic"}, 0, WARN, "e-stop latched"),
    ({"mode": "fault", "fault": "inference worker: boom"}, 0, ERROR, "fault"),
    ({"estop": True, "estop_persist_error": "cannot write /x"}, 0, ERROR, "not persisted")])
def test_diagnostic_levels(change, new, level, words):
    got, message, pairs = assess({**STATUS, **change}, new_rejections=new)
    assert got == level and words in message
    values = dict(pairs)
    assert values["input_age_s/camera/front"] == "0.05" and values["input_age_s/joint_states"] == "never"
    assert values["inference_ms/median"] == "80" and values["rejected/jump"] == "2"
    assert all(isinstance(v, str) for v in values.values())


def test_one_diagnostic_status_per_node():
    from builtin_interfaces.msg import Time

    array = diagnostic_array("policy_node: policy", "ckpt", STATUS, 0, stamp=Time(sec=5))
    assert len(array.status) == 1 and array.status[0].name == "policy_node: policy"
    assert array.status[0].level == bytes([OK]) and array.header.stamp.sec == 5


def test_the_pointing_report_follows_the_runners_layout():
    """last_points: object (u, v) per camera, then pad; last_confidence: object per camera, then pad."""
    points = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], np.float32)
    report = pointing_status(("front", "wrist"), points, np.array([0.9, 0.8, 0.4, 0.3], np.float32))
    assert report == {"front": {"object_uv": [0.1, 0.2], "pad_uv": [0.5, 0.6], "object_confidence": 0.9,
                                "pad_confidence": 0.4},
                      "wrist": {"object_uv": [0.3, 0.4], "pad_uv": [0.7, 0.8], "object_confidence": 0.8,
                                "pad_confidence": 0.3}}
    json.dumps(report)  # plain floats: policy/status carries it as JSON
    assert pointing_status(("front", "wrist"), points, None)["front"] == {"object_uv": [0.1, 0.2], "pad_uv": [0.5, 0.6]}


@pytest.mark.parametrize("points,confidence", [
    (None, None), (np.zeros(5), np.zeros(4)), (np.full(8, np.nan), np.zeros(4)), (np.zeros(8), np.zeros(3)),
    ("not points", None), ([object()] * 8, None), (np.zeros(8), {"front": 1.0}), (np.zeros((2, 4)), np.zeros(4))])
def test_a_pointing_report_it_cannot_read_is_left_out_not_raised(points, confidence):
    assert pointing_status(("front", "wrist"), points, confidence) == {}


def test_pointing_is_reported_on_diagnostics_and_never_changes_the_level():
    pointing = pointing_status(("front",), np.array([0.25, 0.5, 0.75, 1.0]), np.array([0.02, 0.6]))
    for change, level in (({}, OK), ({"mode": "estop", "estop": True}, WARN), ({"mode": "fault", "fault": "x"}, ERROR)):
        got, message, pairs = assess({**STATUS, **change, "pointing": pointing})
        assert (got, message) == assess({**STATUS, **change})[:2] and got == level  # a low confidence is no warning
        values = dict(pairs)
        assert values["pointing/front/object_uv"] == "0.250,0.500" and values["pointing/front/pad_uv"] == "0.750,1.000"
        assert values["pointing/front/object_confidence"] == "0.02" and values["pointing/front/pad_confidence"] == "0.6"
    assert not any(k.startswith("pointing/") for k, _ in assess(STATUS)[2])
