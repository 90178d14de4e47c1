"""The one door to the Hugging Face Hub: retries and error translation for every Hub call.

Every call hf_task2vec makes to the Hub (the embedding store, the expert index and model cards,
the revision of a Hub dataset, the Space's Hub input) runs through `hub_call`: transient failures
(HTTP 408/429/5xx, dropped connections) are retried with exponential backoff (`RETRIES` attempts,
`RETRY_WAIT` seconds before the first retry, doubled each time); every other ``huggingface_hub``
error is translated once, by `translate`, into a `HubError` (or the subclass a caller asks for,
e.g. `HubDatasetError`) whose message names the target and the fix and whose ``reason`` says what
failed. The usual ``huggingface_hub`` settings apply: ``HF_ENDPOINT``, ``HF_TOKEN`` or the token of
``hf auth login`` (never logged), ``HF_HOME``, ``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import HubError, HubReason, Task2VecError

logger = logging.getLogger(__name__)

__all__ = ["RETRIES", "RETRY_WAIT", "HubTarget", "hub_call", "translate", "is_transient", "status_of"]

RETRIES = 4  # attempts of every Hub operation on transient errors
RETRY_WAIT = 1.0  # seconds before the first retry, doubled each time
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
LOGIN = "log in with `hf auth login` or set HF_TOKEN"
T = TypeVar("T")


@dataclass(frozen=True)
class HubTarget:
    """What a Hub call is about, for its error messages.

    Attributes:
        label: how messages name it, e.g. ``"Hub dataset repo 'user/x'"`` or ``"Hub model 'user/m'"``.
        endpoint: the Hub URL, named in "not found" messages (``""``: not named).
        revision: the revision asked for (named in "no such revision" messages).
        token: the token given by the caller (``None``: the saved login / ``HF_TOKEN``; ``False``: none).
        not_found_hint: added to "not found" messages (e.g. "a store repo is created by its first push").
        forbidden_hint: what a 403 means for this target.
        local: a local folder, not the Hub (no retries; OS errors are reported as they are).
    """

    label: str
    endpoint: str = ""
    revision: str | None = None
    token: str | bool | None = None
    not_found_hint: str = ""
    forbidden_hint: str = "the token in use has no access to it"
    local: bool = False

    def has_token(self) -> bool:
        if self.token is False:
            return False
        if isinstance(self.token, str):
            return True
        from huggingface_hub import get_token

        return get_token() is not None


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of a ``huggingface_hub`` HTTP error (``None`` for other errors)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return int(status) if isinstance(status, int) else None


def _transport_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (
        ("httpx2", ("TransportError",)),
        ("httpx", ("TransportError",)),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for name in names:
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                found.append(cls)
    return tuple(found)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying can help: HTTP 408/429/5xx and dropped connections (not offline mode)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return False
    if isinstance(exc, HfHubHTTPError):
        return status_of(exc) in TRANSIENT_STATUS
    return isinstance(exc, _transport_errors())


def _explain(exc: BaseException, target: HubTarget, attempts: int) -> tuple[HubReason, str]:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    label = target.label
    if isinstance(exc, GatedRepoError):
        return "gated", f"{label} is gated: request access on its Hub page, then {LOGIN} with that account"
    if isinstance(exc, RepositoryNotFoundError):
        who = (
            f"you are not logged in: {LOGIN}"
            if not target.has_token()
            else "the token in use (HF_TOKEN or `hf auth login`) has no access to it"
        )
        found = (
            f"was not found at {target.endpoint}. Check the repo id ('user/name')"
            if target.endpoint
            else "was not found: check the id ('user/name')"
        )
        hint = f"; {target.not_found_hint}" if target.not_found_hint else ""
        return "not_found", f"{label} {found}{hint}; if it is private, {who}"
    if isinstance(exc, RevisionNotFoundError):
        return "revision", f"{label} has no revision {target.revision!r}: pass an existing branch, tag or commit"
    if isinstance(exc, RemoteEntryNotFoundError):
        return "not_found", f"a file of {label} is missing ({exc}); push it again"
    if isinstance(exc, OfflineModeIsEnabled | LocalEntryNotFoundError):
        return "offline", (
            f"{label} is not in the local cache and HF_HUB_OFFLINE is set (or the Hub cannot be reached): unset "
            "HF_HUB_OFFLINE and connect, or read it once online first"
        )
    if isinstance(exc, HfHubHTTPError):
        status = status_of(exc)
        if status == 401:
            why = (
                f"you are not logged in: {LOGIN}"
                if not target.has_token()
                else f"the token is invalid or expired: {LOGIN} with a valid token"
            )
            return "auth", f"the Hub rejected the request for {label} (401): {why}"
        if status == 403:
            return "forbidden", f"no permission on {label} (403): {target.forbidden_hint}; {LOGIN}"
        if status in TRANSIENT_STATUS:
            return "unavailable", (
                f"the Hub failed with HTTP {status} for {label} after {attempts} tries; try again later"
            )
        detail = getattr(exc, "server_message", None) or str(exc).splitlines()[0]
        return "error", f"the Hub answered HTTP {status} for {label}: {detail}"
    if isinstance(exc, _transport_errors()):
        return "unavailable", (
            f"cannot reach the Hub at {target.endpoint or 'HF_ENDPOINT'} for {label} after {attempts} tries "
            f"({type(exc).__name__}: {exc}). Check your network/proxy and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to "
            "read cached files"
        )
    if isinstance(exc, OSError) and target.local:
        return "error", f"{label}: {exc}"
    return "error", f"{label}: {type(exc).__name__}: {exc}"


def translate(
    exc: BaseException, what: str, target: HubTarget, *, attempts: int = 1, error: type[HubError] = HubError
) -> Task2VecError:
    """The hf_task2vec error for a failed Hub call: ``error(message, reason=..., status=...)``.

    ``what`` (e.g. ``"push"``) starts the message; errors of hf_task2vec pass through unchanged.
    """
    if isinstance(exc, Task2VecError):
        return exc
    reason, text = _explain(exc, target, attempts)
    return error(f"{what}: {text}" if what else text, reason=reason, status=status_of(exc))


def hub_call(
    what: str,
    fn: Callable[[], T],
    target: HubTarget,
    *,
    error: type[HubError] = HubError,
    retry_if: Callable[[BaseException], bool] | None = None,
    attempts: int | None = None,
) -> T:
    """Run ``fn`` (one Hub operation), retrying transient failures (and those ``retry_if`` accepts);
    any other failure is raised as ``error`` (see `translate`). Local targets are tried once;
    ``attempts`` caps the tries (default `RETRIES`)."""
    attempts = 1 if target.local else (RETRIES if attempts is None else max(1, attempts))
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Task2VecError:
            raise
        except Exception as exc:
            if attempt < attempts and (is_transient(exc) or (retry_if is not None and retry_if(exc))):
                wait = RETRY_WAIT * 2 ** (attempt - 1)
                logger.warning(
                    "%s on %s failed (%s); retry %d/%d in %.1f s",
                    what or "Hub call",
                    target.label,
                    type(exc).__name__,
                    attempt,
                    attempts - 1,
                    wait,
                )
                time.sleep(wait)
                continue
            raise translate(exc, what, target, attempts=attempt, error=error) from exc
    raise AssertionError("unreachable")
