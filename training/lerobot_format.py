"""LeRobot datasets on disk <-> our `mot-dataset/1`: import v3.0 and v2.1, export v3.0.

The work lives in three modules; this one gathers their entry points under the name callers know:

    training.lerobot_layout   the v3.0 / v2.1 / v2.0 layouts, reading one (`LeRobotSource`)
    training.lerobot_import   LeRobot -> ours: `import_lerobot`, `lerobot_features`, the feature `Mapping`
    training.lerobot_export   ours -> LeRobot v3.0: `export_lerobot`
"""

from __future__ import annotations

from training.lerobot_export import export_lerobot
from training.lerobot_import import Mapping, import_lerobot, lerobot_features
from training.lerobot_layout import LeRobotSource, column_array

__all__ = ["LeRobotSource", "Mapping", "column_array", "export_lerobot", "import_lerobot", "lerobot_features"]
