"""Robot graph: two cameras, the microphone, and the policy driving the arm's trajectory controller.

    ros2 launch mot_policy robot.launch.py checkpoint:=/path/to/checkpoint \
        trajectory_topic:=/arm_controller/joint_trajectory

The robot's own driver publishes `joint_states` and runs the trajectory controller; this graph only
adds sensing and the (always guarded) policy. `dry_run:=true` computes and logs without publishing.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    params = os.path.join(get_package_share_directory("mot_policy"), "config", "robot.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", description="policy checkpoint directory"),
        DeclareLaunchArgument("backend", default_value="onnxruntime", description="torch | onnxruntime | tensorrt"),
        DeclareLaunchArgument("trajectory_topic", default_value="/joint_trajectory",
                              description="the arm controller's JointTrajectory topic"),
        DeclareLaunchArgument("dry_run", default_value="false", description="compute and log, publish no command"),
        Node(package="mot_policy", executable="camera_node", name="front_camera", output="screen",
             parameters=[params]),
        Node(package="mot_policy", executable="camera_node", name="wrist_camera", output="screen",
             parameters=[params]),
        Node(package="mot_policy", executable="audio_node", name="audio_node", output="screen", parameters=[params]),
        Node(package="mot_policy", executable="policy_node", name="policy_node", output="screen",
             parameters=[params, {"checkpoint": LaunchConfiguration("checkpoint"),
                                  "backend": LaunchConfiguration("backend"),
                                  "dry_run": ParameterValue(LaunchConfiguration("dry_run"), value_type=bool)}],
             remappings=[("joint_trajectory", LaunchConfiguration("trajectory_topic"))]),
    ])
