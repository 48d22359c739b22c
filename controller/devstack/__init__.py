"""The local stack: a real kube-apiserver + etcd, mlflow server and Prometheus, all on 127.0.0.1.

`modelrollout dev up` and the pytest fixtures use the same code, so tests and users run the same stack.
"""
