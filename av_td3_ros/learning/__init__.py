"""Learn a driving policy: TD3, replay, the learner, imitation, fine-tuning (no rclpy)."""
