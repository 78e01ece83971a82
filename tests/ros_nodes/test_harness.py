"""The ROS test harness itself: retiring a node mid-test must not crash the spin the other nodes rely on."""

import time

import rclpy
from std_msgs.msg import String


def _busy_node(ros, name: str):
    """A node with callbacks always in flight: a 1 kHz timer publishing onto a topic it also subscribes to."""
    node = rclpy.create_node(name, context=ros.context)
    publisher = node.create_publisher(String, "chatter", 10)
    node.create_subscription(String, "chatter", lambda message: None, 10)
    node.create_timer(0.001, lambda: publisher.publish(String(data=name)))
    return ros.add(node)


def test_retiring_busy_nodes_while_spinning_never_crashes_the_spin(ros):
    # Removing and destroying such a node while spinning raised InvalidHandle out of spin() in 2 of 3
    # runs of this loop; retire() defers the destruction until the spin has stopped.
    heard = ros.collect(String, "chatter")
    for k in range(10):
        node = _busy_node(ros, f"busy_{k}")
        time.sleep(0.05)
        ros.retire(node)
    assert ros.errors == [] and ros._thread.is_alive()
    survivor = _busy_node(ros, "survivor")
    ros.wait_for(lambda: any(m.data == "survivor" for m in heard), 5, "the harness node hearing a node added after")
    publisher = ros.node.create_publisher(String, "chatter", 10)
    assert ros.retired and all(n not in ros.nodes for n in ros.retired)
    ros.wait_subscribers(publisher, count=2)  # the harness's own and the survivor's; the 10 retired ones do not count
    assert survivor in ros.nodes
