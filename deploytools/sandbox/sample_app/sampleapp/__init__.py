"""The sample app package."""
