"""Degradations that turn HR clips into LR inputs."""
