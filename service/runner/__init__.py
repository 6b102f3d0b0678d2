"""The runner side: what Airflow tasks, init containers and sidecars run to get a token."""
