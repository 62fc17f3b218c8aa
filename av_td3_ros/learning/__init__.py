"""Learn a driving policy: TD3 and its critic, replay, the learner, imitation, fine-tuning.

No rclpy. The driver process never imports this package.
"""
