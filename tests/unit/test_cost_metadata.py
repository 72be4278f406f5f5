"""Contract §3's cost keys (max-cost-usd, reuse, save-outputs, max-failed-percent, provider): parsed
into BatchSpec with the stack's defaults; every bad value is `invalid_metadata` naming its key."""

from __future__ import annotations

import pytest

from rowcall.metadata import InvalidMetadata, SpecDefaults, spec_from_metadata
from rowcall.settings import IngestSettings, UploadSettings

BASE_ENV = {
    "TABLE_NAME": "t",
    "CHUNK_QUEUE_URL": "q",
    "DONE_QUEUE_URL": "d",
    "DEFAULT_TECHNIQUE_ID": "tech",
    "MAX_ROWS": "10",
    "MAX_BYTES": "100",
    "CHUNK_ROWS": "5",
    "PROVIDER_URL": "https://provider.example",
    "PROVIDER_API_KEY_PARAM": "/p",
}


def parse(defaults: SpecDefaults | None = None, **meta: str):  # type: ignore[no-untyped-def]
    return spec_from_metadata(
        {f"x-amz-meta-{k.replace('_', '-')}": v for k, v in meta.items()},
        key="uploads/x.csv",
        default_technique_id="tech",
        defaults=defaults,
    )


def test_absent_keys_take_the_stack_defaults() -> None:
    p = parse()
    assert (p.max_cost_usd, p.reuse, p.save_outputs, p.max_failed_percent, p.provider) == (
        None,
        True,
        True,
        None,
        "flora",
    )
    stack = SpecDefaults(max_cost_usd=12.5, reuse=False, save_outputs=False, provider="replicate")
    s = parse(stack)
    assert (s.max_cost_usd, s.reuse, s.save_outputs, s.provider) == (12.5, False, False, "replicate")


def test_given_keys_win_over_the_defaults() -> None:
    stack = SpecDefaults(max_cost_usd=12.5, reuse=False, save_outputs=False)
    meta = {"max_cost_usd": "0.5", "reuse": "ON", "save_outputs": "on", "max_failed_percent": "25"}
    spec = parse(stack, provider="Replicate", **meta)
    assert (spec.max_cost_usd, spec.reuse, spec.save_outputs, spec.max_failed_percent, spec.provider) == (
        0.5,
        True,
        True,
        25.0,
        "replicate",
    )
    assert parse(max_cost_usd="0").max_cost_usd == 0.0
    assert parse(max_failed_percent="100").max_failed_percent == 100.0


@pytest.mark.parametrize(
    ("meta", "key", "fragment"),
    [
        ({"reuse": "maybe"}, "reuse", "neither on nor off"),
        ({"save_outputs": "yes please"}, "save-outputs", "neither on nor off"),
        ({"max_cost_usd": "-1"}, "max-cost-usd", "negative"),
        ({"max_cost_usd": "ten"}, "max-cost-usd", "not a number"),
        ({"max_cost_usd": "nan"}, "max-cost-usd", "not a finite number"),
        ({"max_cost_usd": "inf"}, "max-cost-usd", "not a finite number"),
        ({"max_failed_percent": "200"}, "max-failed-percent", "over 100"),
        ({"max_cost_usd": "1e12"}, "max-cost-usd", "over 1,000,000,000"),
        ({"max_failed_percent": "-5"}, "max-failed-percent", "negative"),
        ({"provider": "openai"}, "provider", "not one of"),
    ],
)
def test_a_bad_value_is_invalid_metadata_naming_its_key(
    meta: dict[str, str], key: str, fragment: str
) -> None:
    with pytest.raises(InvalidMetadata) as refused:
        parse(**meta)
    assert str(refused.value).startswith(f"{key}: ")
    assert fragment in str(refused.value)


def test_settings_read_the_template_defaults_and_empty_means_none() -> None:
    none = IngestSettings.from_env(BASE_ENV | {"MAX_BATCH_COST_USD": ""}).spec_defaults()
    assert none == SpecDefaults()
    env = BASE_ENV | {
        "MAX_BATCH_COST_USD": "7.25",
        "REUSE_COMPLETED_ROWS": "off",
        "SAVE_OUTPUTS": "off",
        "DEFAULT_PROVIDER": "replicate",
        "DATA_BUCKET": "b",
    }
    expected = SpecDefaults(max_cost_usd=7.25, reuse=False, save_outputs=False, provider="replicate")
    assert IngestSettings.from_env(env).spec_defaults() == expected
    assert UploadSettings.from_env(env).spec_defaults() == expected
    with pytest.raises(ValueError, match="MAX_BATCH_COST_USD"):
        IngestSettings.from_env(BASE_ENV | {"MAX_BATCH_COST_USD": "-3"})
