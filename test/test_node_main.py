# run_node's spin loop: an executor error is the shutdown's when the context shuts down soon
# after it (rcl stops the middleware before it marks the context invalid); any other executor
# error is logged and the node spins on. Ctrl-C still exits 0.
import threading

import pytest
from processes import PythonProcess
from rclpy.context import Context

from av_td3_ros.nodes.node_main import shutting_down

# A node whose timer raises once without a guard, as a failed take does inside the executor.
UNGUARDED_NODE = '''
from rclpy.node import Node
from av_td3_ros.nodes.node_main import run_node

class Unguarded(Node):
    def __init__(self):
        super().__init__('unguarded')
        self.ticks = 0
        self.create_timer(0.05, self.tick)

    def tick(self):
        self.ticks += 1
        if self.ticks == 3:
            raise RuntimeError('Unable to convert call argument')
        if self.ticks == 6:
            print('still spinning', flush=True)

run_node(Unguarded)
'''


def test_a_context_that_finishes_shutting_down_after_the_error_is_a_shutdown(ros_env):
    import rclpy
    context = Context()
    rclpy.init(context=context, domain_id=int(ros_env['ROS_DOMAIN_ID']))
    assert not shutting_down(context, settle_s=0.05)  # up and staying up: a real error
    finisher = threading.Timer(0.1, context.shutdown)  # shutdown lands after the error
    finisher.start()
    try:
        assert shutting_down(context, settle_s=60.0)
    finally:
        finisher.join()
    assert shutting_down(context, settle_s=0.0)  # already down: no wait needed


@pytest.mark.slow
def test_an_executor_error_is_logged_and_the_node_spins_on(ros_env, tmp_path):
    node = PythonProcess(['-c', UNGUARDED_NODE], ros_env, tmp_path / 'unguarded.log')
    try:
        assert node.wait_for_output('still spinning'), node.output()
        assert 'executor error, spinning on: RuntimeError: Unable to convert' in node.output()
        assert node.interrupt(timeout=30.0) == 0, node.output()
    finally:
        node.kill()
    assert 'Traceback' not in node.output()
