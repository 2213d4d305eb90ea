"""Deployable services built on falcon_lite."""
