"""Development graph: sim_node (the MuJoCo arm) + policy_node, optionally audio_node.

    ros2 launch mot_policy sim.launch.py checkpoint:=/path/to/checkpoint [audio:=true]
    ros2 run mot_policy mot_say "pick up the red cube"   # or: mot say "pick up the red cube" --wait

`mot stack sim --checkpoint PATH` starts the same nodes from the same YAML without a ROS install.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    params = os.path.join(get_package_share_directory("mot_policy"), "config", "sim.yaml")
    checkpoint = LaunchConfiguration("checkpoint")
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", description="policy checkpoint directory"),
        DeclareLaunchArgument("backend", default_value="torch", description="torch | onnxruntime | tensorrt"),
        DeclareLaunchArgument("audio", default_value="false", description="also start audio_node (microphone)"),
        Node(package="mot_policy", executable="sim_node", name="sim_node", output="screen", parameters=[params]),
        Node(package="mot_policy", executable="policy_node", name="policy_node", output="screen",
             parameters=[params, {"checkpoint": checkpoint, "backend": LaunchConfiguration("backend")}]),
        Node(package="mot_policy", executable="audio_node", name="audio_node", output="screen", parameters=[params],
             condition=IfCondition(LaunchConfiguration("audio"))),
    ])
