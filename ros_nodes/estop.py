"""Who may reset the e-stop: the operator's token, and the client that sends it.

Tripping the e-stop is open to everyone (the ``estop`` topic, a spoken "stop"): stopping must be easy.
Resetting it is not: ``policy/reset_estop`` is an ``rcl_interfaces/srv/SetParameters`` service (a
standard type that carries a string; std_srvs has none) whose request must hold one parameter named
``token`` with the operator's secret, compared in constant time with the contents of the node's
``estop_token_file``. Anything else is refused, and so is every call when no token file is configured.

The token travels in clear over DDS unless the graph runs with SROS2 (docs/ros.md): the token stops a
stray node or a script on the domain from releasing the robot; SROS2 access control is what stops an
attacker who can read the traffic.

    python -m ros_nodes.estop reset                       # token from ~/.config/mot_policy/estop_token
    python -m ros_nodes.estop reset --token-file /etc/mot_policy/estop_token --service /arm/policy/reset_estop
    python -m ros_nodes.estop token PATH                  # create a token file (0600) if there is none
"""

from __future__ import annotations

import argparse
import hmac
import os
import secrets
import stat
import sys
import tempfile
from pathlib import Path

DEFAULT_TOKEN_FILE = "~/.config/mot_policy/estop_token"
MIN_TOKEN_CHARS = 16
TOKEN_PARAMETER = "token"


def read_token(path: str | Path) -> bytes:
    """The token in ``path`` (surrounding whitespace stripped). Raises ValueError naming the problem."""
    path = Path(path).expanduser()
    try:
        token = path.read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"estop_token_file: expected a readable file, received {path} ({exc.strerror})") from exc
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"estop_token_file: expected a token of at least {MIN_TOKEN_CHARS} characters in {path}, "
                         f"received {len(token)}")
    return token


def ensure_token(path: str | Path) -> tuple[bytes, bool]:
    """Read the token file, creating it (mode 0600, a random token) when it does not exist.

    Returns (token, created). Creation is atomic and never overwrites: the token is written to a
    private temporary file and linked into place, so two nodes starting at once agree on one token.
    """
    path = Path(path).expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_urlsafe(32).encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
                return read_token(path), True
            except FileExistsError:
                pass  # someone else created it first: theirs wins
        finally:
            os.unlink(tmp)
    return read_token(path), False


def token_file_warning(path: str | Path) -> str:
    """A warning when others may read the token file (as ssh refuses a world-readable key), else ""."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
    except OSError:
        return ""
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"estop_token_file {path} is accessible to other users (mode {stat.S_IMODE(mode):o}); chmod 600 it"
    return ""


def token_matches(expected: bytes | None, given: str) -> bool:
    """Constant-time comparison; no expected token (none configured) never matches."""
    if not expected or not isinstance(given, str):
        return False
    return hmac.compare_digest(expected, given.strip().encode("utf-8", "surrogateescape"))


def token_from_request(request) -> str | None:
    """The ``token`` string parameter of a SetParameters request, or None when there is not exactly one."""
    from rcl_interfaces.msg import ParameterType

    tokens = [p.value.string_value for p in request.parameters if p.name == TOKEN_PARAMETER
              and p.value.type == ParameterType.PARAMETER_STRING]
    return tokens[0] if len(tokens) == 1 and len(request.parameters) == 1 else None


def reset_request(token: str):
    """A SetParameters request carrying ``token`` (what the client sends)."""
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=token)
    return SetParameters.Request(parameters=[Parameter(name=TOKEN_PARAMETER, value=value)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ros_nodes.estop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    reset = sub.add_parser("reset", help="call policy/reset_estop with the operator's token")
    reset.add_argument("--token-file", default=DEFAULT_TOKEN_FILE)
    reset.add_argument("--service", default="policy/reset_estop")
    reset.add_argument("--timeout", type=float, default=5.0)
    make = sub.add_parser("token", help="create a token file (0600) unless one exists; prints its path")
    make.add_argument("path", nargs="?", default=DEFAULT_TOKEN_FILE)
    args = parser.parse_args(argv)

    if args.command == "token":
        _, created = ensure_token(args.path)
        print(f"{Path(args.path).expanduser()} ({'created' if created else 'exists'})")
        return 0
    try:
        token = read_token(args.token_file).decode("utf-8", "surrogateescape")
    except ValueError as exc:
        print(f"estop reset: {exc}", file=sys.stderr)
        return 2
    import rclpy
    from rcl_interfaces.srv import SetParameters

    rclpy.init(args=["mot_estop_reset"])
    node = rclpy.create_node("mot_estop_reset")
    try:
        client = node.create_client(SetParameters, args.service)
        if not client.wait_for_service(timeout_sec=args.timeout):
            print(f"estop reset: no {client.srv_name} service within {args.timeout} s", file=sys.stderr)
            return 2
        future = client.call_async(reset_request(token))
        rclpy.spin_until_future_complete(node, future, timeout_sec=args.timeout)
        if not future.done() or not future.result().results:
            print("estop reset: no answer", file=sys.stderr)
            return 2
        result = future.result().results[0]
        print(f"estop reset: {'done' if result.successful else 'refused'}: {result.reason}")
        return 0 if result.successful else 1
    finally:
        node.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
