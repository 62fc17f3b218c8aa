# run_node's spin loop: an executor error is the shutdown's when the context shuts down soon
# after it (rcl stops the middleware before it marks the context invalid); any other executor
# error is logged and the node spins on. Ctrl-C still exits 0.
import sys
import threading
import time

import pytest
from processes import REPO
from rclpy.context import Context

from av_td3_ros.nodes.node_main import shutting_down
from av_td3_ros.tools.child_process import ChildProcess

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
    log_path = tmp_path / 'unguarded.log'
    with open(log_path, 'wb') as log:
        child = ChildProcess([sys.executable, '-c', UNGUARDED_NODE], env=ros_env,
                             cwd=str(REPO), stdout=log)
        try:
            deadline = time.monotonic() + 60.0
            while 'still spinning' not in log_path.read_text() and child.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            output = log_path.read_text()
            assert 'still spinning' in output, output
            assert 'executor error, spinning on: RuntimeError: Unable to convert' in output
            assert child.interrupt(timeout=30.0) == 0, log_path.read_text()
        finally:
            child.kill()
    assert 'Traceback' not in log_path.read_text()
