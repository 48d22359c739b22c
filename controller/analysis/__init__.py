"""Live analysis: Prometheus provider, safe query templates and the judges (judges.py, sequential.py)."""
