"""Act without a learned policy: the route expert and exploration noise (no rclpy)."""
