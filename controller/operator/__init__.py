"""kopf wiring: read the resource, decide with the engine, act through the adapters, write status."""
