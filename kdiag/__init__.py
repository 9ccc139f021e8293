"""kdiag: finds anomalies in Kubernetes clusters from a stream of object changes."""

__version__ = "0.1.0"
