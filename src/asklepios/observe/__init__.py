"""What operators see: JSON logs, Prometheus metrics and the health endpoints.

Imports nothing else of Asklepios, so every layer may use it.
"""
