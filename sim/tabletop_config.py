"""The tabletop env's tunable numbers: `TabletopConfig` (physics step, episode caps, reward weights per
task family, scene sampling and task thresholds), `default_config()` and `with_config(**overrides)`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sim.language import TASK_FAMILIES
from sim.tasks import SceneConfig, TaskConfig


@dataclass(frozen=True)
class TabletopConfig:
    """Every tunable number of the env (mujoco_playground style)."""

    physics_timestep: float = 0.002
    max_episode_steps: dict[str, int] = field(
        default_factory=lambda: {"reach": 80, "pick": 100, "push": 150, "place": 150}
    )
    terminate_on_success: bool = True
    fell_off_z: float = -0.05  # target below this height: terminated (failure)
    init_qpos_noise: float = 0.03  # rad, uniform, on the home pose
    home_tcp: tuple[float, float, float] = (0.42, 0.0, 0.22)  # initial TCP position (IK from HOME_QPOS)
    reward_weights: dict[str, dict[str, float]] = field(
        default_factory=lambda: {
            "reach": {"reach": 1.0, "grasp": 0.0, "lift": 0.0, "goal": 0.0, "success": 5.0},
            "pick": {"reach": 1.0, "grasp": 0.5, "lift": 2.0, "goal": 0.0, "success": 5.0},
            "push": {"reach": 0.5, "grasp": 0.0, "lift": 0.0, "goal": 2.0, "success": 5.0},
            "place": {"reach": 0.5, "grasp": 0.5, "lift": 0.5, "goal": 2.0, "success": 5.0},
        }
    )
    scene: SceneConfig = field(default_factory=SceneConfig)
    task: TaskConfig = field(default_factory=TaskConfig)

    def __post_init__(self) -> None:
        if not 0.0002 <= self.physics_timestep <= 0.01:
            raise ValueError(f"physics_timestep: expected in [0.0002, 0.01] s, got {self.physics_timestep}")
        missing = set(TASK_FAMILIES) - set(self.max_episode_steps)
        if missing:
            raise ValueError(f"max_episode_steps: missing families {sorted(missing)}")


def default_config() -> TabletopConfig:
    return TabletopConfig()


def with_config(**overrides) -> TabletopConfig:
    """`default_config()` with top-level fields replaced, e.g. `with_config(terminate_on_success=False)`."""
    return replace(default_config(), **overrides)
