"""The API's routers: runs, stress, system (health, metrics, dashboard)."""
