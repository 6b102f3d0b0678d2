"""Secrets named by the broker YAML: where each lives, and checking it can be read."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

__all__ = ["SecretSource", "check_private_key", "secret_source"]


class SecretSource:
    """Where a secret lives; read on use so a rotated file is picked up without restart."""

    def __init__(
        self, *, file: Path | None = None, env: str | None = None, inline: str = ""
    ) -> None:
        self.file = file
        self.env = env
        self._inline = inline

    def describe(self) -> str:
        """Where the secret comes from, never what it is."""
        if self.file is not None:
            return f"file {self.file}"
        if self.env is not None:
            return f"env {self.env}"
        return "inline (development only)"

    def read(self) -> str:
        """The current secret; raises ``OSError`` / ``LookupError`` when it is unavailable."""
        if self.file is not None:
            value = self.file.read_text(encoding="utf-8").strip()
        elif self.env is not None:
            value = os.environ.get(self.env, "").strip()
        else:
            value = self._inline
        if not value:
            raise LookupError(f"secret from {self.describe()} is empty")
        return value

    def __repr__(self) -> str:
        return f"SecretSource({self.describe()})"


def secret_source(  # noqa: PLR0911 - one early return per kind of problem
    where: str, ref: object, base_dir: Path, allow_inline: bool, problems: list[str]
) -> SecretSource | None:
    if ref is None:
        problems.append(f"{where}: required ({{file: PATH}} or {{env: NAME}})")
        return None
    if isinstance(ref, str):
        if not allow_inline:
            problems.append(
                f"{where}: inline secrets are refused; use {{file: PATH}} or {{env: NAME}} "
                "(TOKEN_BROKER_ALLOW_INLINE_SECRETS=true allows them for local development)"
            )
            return None
        source = SecretSource(inline=ref)
    elif isinstance(ref, dict) and set(ref) == {"file"} and isinstance(ref["file"], str):
        source = SecretSource(file=(base_dir / ref["file"]))
    elif isinstance(ref, dict) and set(ref) == {"env"} and isinstance(ref["env"], str):
        source = SecretSource(env=ref["env"])
    else:
        problems.append(f"{where}: must be {{file: PATH}} or {{env: NAME}}")
        return None
    try:
        source.read()
    except FileNotFoundError:
        problems.append(f"{where}: {source.describe()} does not exist")
        return None
    except OSError as exc:
        problems.append(f"{where}: {source.describe()} cannot be read ({exc.strerror})")
        return None
    except LookupError:
        problems.append(f"{where}: {source.describe()} is unset or empty")
        return None
    return source


def check_private_key(where: str, source: SecretSource, alg: str, problems: list[str]) -> None:
    try:
        key = load_pem_private_key(source.read().encode(), password=None)
    except (ValueError, TypeError):
        problems.append(f"{where}: not an unencrypted PEM private key")
        return
    wants_ec = alg.startswith("ES")
    if wants_ec and not isinstance(key, ec.EllipticCurvePrivateKey):
        problems.append(f"{where}: signing_alg {alg} needs an EC key")
    elif not wants_ec and not isinstance(key, rsa.RSAPrivateKey):
        problems.append(f"{where}: signing_alg {alg} needs an RSA key")
