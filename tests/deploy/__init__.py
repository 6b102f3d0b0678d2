"""Deployment artefacts: the Dockerfile, requirements.lock, the Helm chart and its dashboard."""
