"""Learn a driving policy: the learning core (no rclpy).

TD3, the replay buffer, transitions and reward, checkpoints and policy transfer, imitation
(BC, DAgger) and TD3 fine-tuning on the stand-in simulator.
"""
