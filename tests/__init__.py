"""The test suite: real-fleet tests here, tests that need no fleet in unit/."""
