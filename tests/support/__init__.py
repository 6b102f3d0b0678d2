# Copyright 2026 The token-broker authors
# SPDX-License-Identifier: Apache-2.0

"""Helpers of tests, bench and soak: processes, issuer proxy, JWTs; broker, stack, clock modules."""

from tests.support.processes import (
    IDP_DIR,
    MockServer,
    OidcClient,
    OidcProvider,
    RedisServer,
    ServiceError,
    ensure_node_modules,
    free_port,
    http_get_json,
    start_mock_server,
    start_oidc_provider,
    start_redis,
)
from tests.support.proxy import (
    HANG_MAX_SECONDS,
    CapturedRequest,
    CountingProxy,
    Fault,
    start_proxy,
)
from tests.support.tokens import make_client_assertion, verify_access_token

__all__ = [
    "HANG_MAX_SECONDS",
    "IDP_DIR",
    "CapturedRequest",
    "CountingProxy",
    "Fault",
    "MockServer",
    "OidcClient",
    "OidcProvider",
    "RedisServer",
    "ServiceError",
    "ensure_node_modules",
    "free_port",
    "http_get_json",
    "make_client_assertion",
    "start_mock_server",
    "start_oidc_provider",
    "start_proxy",
    "start_redis",
    "verify_access_token",
]
