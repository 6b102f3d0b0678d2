"""The runner side: what Airflow tasks, init containers and sidecars run to get a token.

Standard library only and relative imports only, so the same files ship inside the server
(``service.runner``) and alone as ``token_broker_runner`` (wheel and .pyz, see ``make runner``).
"""

__all__ = ["client", "keeper", "oauth2", "sidecar"]
