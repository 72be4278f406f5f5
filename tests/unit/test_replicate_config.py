"""Replicate's template parameters (contract §5b): wired to the functions that need them, granted
only when set, and read into settings where empty means "not configured"."""

from __future__ import annotations

from typing import Any

from rowcall.settings import IngestSettings, SafetyNetSettings, WebhookSettings, WorkerSettings
from rowcall_local.iam_enforcement import _without_no_value
from rowcall_local.sam_template import SamTemplate
from rowcall_local.stack import PROJECT_ROOT

TOKEN_ARN = (
    "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${ReplicateApiTokenParameter}"
)
SECRET_ARN = (
    "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${ReplicateWebhookSecretParameter}"
)


def _ssm_resources(sam: SamTemplate, role: str) -> list[Any]:
    found: list[Any] = []
    for policy in sam.properties(role)["Policies"]:
        statements = policy["PolicyDocument"]["Statement"]
        for st in statements:
            if "ssm:GetParameter" in st["Action"]:
                found += st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
    return found


def test_parameters_default_to_replicate_not_configured() -> None:
    sam = SamTemplate.load(PROJECT_ROOT / "template.yaml")
    assert sam.parameter_default("ReplicateBaseUrl") == "https://api.replicate.com"
    assert sam.parameter_default("ReplicateApiTokenParameter") == ""
    assert sam.parameter_default("ReplicateWebhookSecretParameter") == ""


def test_token_and_secret_are_granted_only_under_their_condition_to_the_functions_that_use_them() -> None:
    sam = SamTemplate.load(PROJECT_ROOT / "template.yaml")
    conditions = sam.document["Conditions"]
    assert conditions["HasReplicateApiToken"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ReplicateApiTokenParameter"}, ""]}]
    }
    token = {"Fn::If": ["HasReplicateApiToken", {"Fn::Sub": TOKEN_ARN}, {"Ref": "AWS::NoValue"}]}
    secret = {"Fn::If": ["HasReplicateWebhookSecret", {"Fn::Sub": SECRET_ARN}, {"Ref": "AWS::NoValue"}]}
    functions = {f: sam.properties(f) for f in sam.resources("AWS::Serverless::Function")}
    for name, props in functions.items():
        env = props.get("Environment", {}).get("Variables", {})
        role = (
            props["Role"]["Fn::GetAtt"][0]
            if isinstance(props["Role"]["Fn::GetAtt"], list)
            else props["Role"]["Fn::GetAtt"].split(".")[0]
        )
        resources = _ssm_resources(sam, role)
        uses_token = name in {"IngestFunction", "WorkerFunction", "RecorderFunction", "SafetyNetFunction"}
        assert (token in resources) is uses_token, name
        assert ("REPLICATE_API_TOKEN_PARAMETER" in env) is uses_token, name
        assert ("REPLICATE_BASE_URL" in env) is uses_token, name
        uses_secret = name == "WebhookFunction"
        assert (secret in resources) is uses_secret, name
        assert ("REPLICATE_WEBHOOK_SECRET_PARAMETER" in env) is uses_secret, name


def test_a_grant_under_an_unmet_condition_is_dropped_as_cloudformation_does() -> None:
    # moto's CloudFormation resolves `!Ref AWS::NoValue` to None and keeps it in the list.
    policy = {"Statement": [{"Effect": "Allow", "Action": ["ssm:GetParameter"], "Resource": ["arn:a", None]}]}
    assert _without_no_value(policy) == {
        "Statement": [{"Effect": "Allow", "Action": ["ssm:GetParameter"], "Resource": ["arn:a"]}]
    }


BASE = {
    "TABLE_NAME": "t",
    "CHUNK_QUEUE_URL": "q",
    "DONE_QUEUE_URL": "d",
    "PROVIDER_URL": "https://p",
    "PROVIDER_API_KEY_PARAM": "/k",
    "CALLBACK_SECRET_PARAM": "/c",
    "CALLBACK_BASE_URL": "https://cb",
    "RECONCILE_AFTER_SECONDS": "60",
    "CALLBACK_DEADLINE_SECONDS": "600",
    "FINISHED_RUN_QUEUE_URL": "f",
    "PROVIDER_WEBHOOK_SECRET_PARAM": "/s",
    "DEFAULT_TECHNIQUE_ID": "t",
    "MAX_ROWS": "10",
    "MAX_BYTES": "10",
    "CHUNK_ROWS": "10",
}


def test_settings_read_empty_parameters_as_not_configured() -> None:
    empty = {
        **BASE,
        "REPLICATE_BASE_URL": "https://r",
        "REPLICATE_API_TOKEN_PARAMETER": "",
        "REPLICATE_WEBHOOK_SECRET_PARAMETER": " ",
    }
    assert WorkerSettings.from_env(empty).replicate_api_token_param is None
    assert IngestSettings.from_env(empty).replicate_api_token_param is None
    assert WebhookSettings.from_env(empty).replicate_webhook_secret_param is None
    assert SafetyNetSettings.from_env(empty).replicate_base_url == "https://r"
    set_ = {
        **empty,
        "REPLICATE_API_TOKEN_PARAMETER": "/rowcall/replicate-token",
        "REPLICATE_WEBHOOK_SECRET_PARAMETER": "/w",
    }
    assert WorkerSettings.from_env(set_).replicate_api_token_param == "/rowcall/replicate-token"
    assert WebhookSettings.from_env(set_).replicate_webhook_secret_param == "/w"
    # Absent (an older template) is "not configured" too, with Replicate's public root.
    assert WorkerSettings.from_env(BASE).replicate_api_token_param is None
    assert WorkerSettings.from_env(BASE).replicate_base_url == "https://api.replicate.com"
