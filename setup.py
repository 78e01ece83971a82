"""ROS 2 (colcon, ament_python) glue. All distribution metadata lives in pyproject.toml.

setup.py adds only what pyproject.toml cannot express: `data_files`, which put the ament resource
marker, package.xml, the launch files and their YAML under `share/` so that
`get_package_share_directory("mot_policy")` and `ros2 launch mot_policy ...` find them after
`colcon build` or a non-editable `pip install .`.
"""

from glob import glob

from setuptools import setup

PACKAGE = "mot_policy"  # the ROS package name (the distribution is `mot-policy`)

setup(
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", sorted(glob("launch/*.launch.py"))),
        (f"share/{PACKAGE}/config", sorted(glob("launch/config/*.yaml"))),
    ],
)
