"""FLORA's client under its first name: the provider port's types and FLORA's adapter, importable
from here as before (`rowcall.providers` holds them)."""

from rowcall.providers.flora import (
    ALREADY_CREATED,
    BATCH_FATAL_CODES,
    PAUSING_STATUS,
    REPLAY_AGE_S,
    ApiKey,
    CreateOutcome,
    ProviderClient,
    ProviderConnection,
    ProviderErrorBody,
    ProviderErrorEnvelope,
    ProviderUnavailable,
    RetryPolicy,
    RunAlreadyCreated,
    RunCreated,
    RunNotFound,
    RunRefused,
    created_epoch_s,
    tls_context,
)

__all__ = [
    "ALREADY_CREATED",
    "BATCH_FATAL_CODES",
    "PAUSING_STATUS",
    "REPLAY_AGE_S",
    "ApiKey",
    "CreateOutcome",
    "ProviderClient",
    "ProviderConnection",
    "ProviderErrorBody",
    "ProviderErrorEnvelope",
    "ProviderUnavailable",
    "RetryPolicy",
    "RunAlreadyCreated",
    "RunCreated",
    "RunNotFound",
    "RunRefused",
    "created_epoch_s",
    "tls_context",
]
