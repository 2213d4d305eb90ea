"""The falcon-lite REST service and dashboard."""
