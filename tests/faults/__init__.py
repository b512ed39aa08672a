"""Fault-injection tests: interrupted writes, corrupt checkpoints, signals, kills, full disks."""
