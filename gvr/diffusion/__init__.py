"""Rectified flow: noising, loss, Euler sampling, timestep distributions."""
