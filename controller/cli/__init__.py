"""`modelrollout` and `kubectl-modelrollout`."""
