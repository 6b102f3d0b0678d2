"""What operators see: JSON logs, Prometheus metrics, the audit trail."""
