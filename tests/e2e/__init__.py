"""End-to-end tests: the real ``corral`` CLI, real child processes, signals and log files."""
