"""Prediction exporter: inference-logger CloudEvents in, per-class Prometheus counters out."""
