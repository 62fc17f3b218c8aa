"""Define the driving task: reward, episode rules and transition pairing (no rclpy)."""
