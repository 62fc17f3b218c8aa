"""Simulate without CARLA: the CarRacing stand-in, its gymnasium view and evaluation."""
