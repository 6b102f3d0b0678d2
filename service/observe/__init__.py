"""What operators see: JSON logs, Prometheus metrics, the audit trail."""

__all__ = ["audit", "logs", "metrics"]
