"""Taking secrets out of what servers send back, before it reaches a message, a status or an Event."""

from __future__ import annotations

import base64


def redact_credentials(text: str, *, token: str | None = None, username: str | None = None,
                       password: str | None = None) -> str:
    """text with the token, the password and the base64 basic-auth pair replaced by ***.

    For anything a server sends back (error messages echo the Authorization header, proxies echo the
    request): shared by the registry adapter and the gate's MLflow client. The username is not a secret.
    """
    secrets = [value for value in (token, password) if value]
    if username and password:
        # What a server echoing the Authorization header would show of a basic-auth password.
        secrets.append(base64.standard_b64encode(f"{username}:{password}".encode()).decode())
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: no partial leftovers
        text = text.replace(secret, "***")
    return text
