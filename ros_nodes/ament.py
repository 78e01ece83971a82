"""Where the installed launch files and parameter YAML are, with or without a sourced ROS install."""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = "mot_policy"


def share_directory() -> Path:
    """``share/mot_policy``: from the ament index when ROS is sourced, else the pip prefix, else the checkout.

    Order matters: a sourced workspace wins (that is what `ros2 launch` uses); a pip install puts
    data_files under ``sys.prefix/share`` without registering it anywhere; a source checkout (editable
    install, tests) has the same files under ``launch/``, laid out so ``config/`` sits beside them.
    """
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    # ImportError: no ament_index_python; OSError: AMENT_PREFIX_PATH unset; LookupError (KeyError):
    # PackageNotFoundError, the package is not in any prefix on the path.
    except (ImportError, OSError, LookupError):
        pass
    prefix = Path(sys.prefix) / "share" / PACKAGE
    if (prefix / "config").is_dir():
        return prefix
    return Path(__file__).resolve().parent.parent / "launch"
