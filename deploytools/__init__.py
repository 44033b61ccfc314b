"""deploytools: Capistrano-grade deployments for Python apps under supervisor.

Ships a git ref or a directory to a fresh release directory on every host,
precompiles (or clears) bytecode, switches `current` atomically, restarts
supervisor programs with stop -> start, health-checks and rolls back what fails,
and proves afterwards that the code shipped is the code that runs.
"""

__version__ = "0.1.0"
