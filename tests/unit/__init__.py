"""Tests that need no fleet: pure logic and the orchestration on the fake backend."""
