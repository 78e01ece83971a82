"""Who may reset the e-stop: the operator's token, and the client that sends it.

Tripping the e-stop is open to everyone (the ``estop`` topic, a spoken "stop"): stopping must be easy.
Resetting it is not: ``policy/reset_estop`` is an ``rcl_interfaces/srv/SetParameters`` service (a
standard type that carries a string; std_srvs has none) whose request must hold one parameter named
``token`` with the operator's secret, compared in constant time with the contents of the node's
``estop_token_file``. Anything else is refused, and so is every call when no token file is configured.

The token travels in clear over DDS unless the graph runs with SROS2 (docs/ros.md): the token stops a
stray node or a script on the domain from releasing the robot; SROS2 access control is what stops an
attacker who can read the traffic.

    mot estop reset                       # token from ~/.config/mot_policy/estop_token
    mot estop reset --token-file /etc/mot_policy/estop_token --service /arm/policy/reset_estop
    mot estop token PATH                  # create a token file (0600) if there is none

(`python -m ros_nodes.estop ...` is the same command, for a robot without the `mot` entry point.)
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from policy.errors import InputError
from policy.options import parse

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


@dataclass
class ResetConfig:
    token_file: str = DEFAULT_TOKEN_FILE
    """the file holding the operator's token (the one the node's estop_token_file names)"""
    service: str = "policy/reset_estop"
    """the node's reset service (prefix the robot's namespace: /arm/policy/reset_estop)"""
    timeout: float = 5.0
    """seconds to wait for the service and for its answer"""

    def __post_init__(self) -> None:
        if not self.token_file.strip():
            raise InputError("token_file: expected a path to the token file, received an empty string")
        if not self.service.strip():
            raise InputError("service: expected a service name, received an empty string")
        if not self.timeout > 0:
            raise InputError(f"timeout: expected seconds > 0, received {self.timeout}")


@dataclass
class TokenConfig:
    path: tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="PATH")]] = DEFAULT_TOKEN_FILE
    """the token file to create (mode 0600) unless it exists"""


SUBCOMMANDS = {"reset": "call policy/reset_estop with the operator's token",
               "token": "create a token file (0600) unless one exists; prints its path"}


def _usage() -> str:
    rows = "\n".join(f"  {name.ljust(6)} {help_line}" for name, help_line in SUBCOMMANDS.items())
    summary = __doc__.split("\n\n")[0]
    return (f"usage: mot estop {{reset,token}} [OPTIONS]\n\n{summary}\n\nsubcommands:\n{rows}\n\n"
            "Run `mot estop <subcommand> --help` for its options.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] not in SUBCOMMANDS:
        raise InputError(f"expected a subcommand 'reset' or 'token', received {argv[0]!r}")
    if argv[0] == "token":
        made = parse(TokenConfig, argv[1:], "mot estop token", SUBCOMMANDS["token"])
        _, created = ensure_token(made.path)
        print(f"{Path(made.path).expanduser()} ({'created' if created else 'exists'})")
        return 0
    args = parse(ResetConfig, argv[1:], "mot estop reset", SUBCOMMANDS["reset"])
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


if __name__ == "__main__":  # python -m ros_nodes.estop: a mistake reads as in `mot estop`, one line and exit 2
    try:
        raise SystemExit(main())
    except InputError as exc:
        print(f"mot estop: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
