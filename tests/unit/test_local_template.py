"""The local runtime reads its wiring from template.yaml deployed into a real moto server."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from rowcall_local.aws_clients import AwsEndpoint
from rowcall_local.cfn_deploy import deploy_stack, upload_placeholder_artifacts
from rowcall_local.moto_process import MotoProcess
from rowcall_local.sam_template import SamTemplate
from rowcall_local.stack import PROJECT_ROOT, StackSecrets, instance_count, put_secret_parameters
from rowcall_local.template_wiring import StackWiring, read_wiring

STACK = "rowcall-local"
CALLBACK_URL = "http://127.0.0.1:1234"
PROVIDER_URL = "http://127.0.0.1:4321"


@dataclass(frozen=True)
class Deployed:
    sam: SamTemplate
    cfn: dict[str, Any]
    wiring: StackWiring
    aws: AwsEndpoint


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    moto = MotoProcess(tmp_path_factory.mktemp("moto") / "moto.log")
    aws = AwsEndpoint(moto.start())
    try:
        sam = SamTemplate.load(PROJECT_ROOT / "template.yaml")
        cfn = sam.translate(f"{STACK}-artifacts", aws.region)
        upload_placeholder_artifacts(aws, f"{STACK}-artifacts", sam.local_artifacts())
        parameters = {"ProviderBaseUrl": PROVIDER_URL, "CallbackBaseUrl": CALLBACK_URL, "BucketPrefix": STACK}
        physical = deploy_stack(aws, STACK, cfn, parameters)
        yield Deployed(sam, cfn, read_wiring(sam, cfn, physical, aws, STACK), aws)
    finally:
        moto.stop()


def _sam_events(sam: SamTemplate, event_type: str) -> list[tuple[str, dict[str, object]]]:
    found = []
    for function_id, resource in sam.resources("AWS::Serverless::Function").items():
        for event in (resource["Properties"].get("Events") or {}).values():
            if event["Type"] == event_type:
                found.append((function_id, event["Properties"]))
    return found


def test_http_routes_come_from_the_template_with_their_auth(deployed: Deployed) -> None:
    routes = {(r.method, r.path): r for r in deployed.wiring.routes}
    assert len(routes) == len(_sam_events(deployed.sam, "HttpApi"))
    callback = routes[("POST", "/callbacks/{batch_id}/{row_id}")]
    assert callback.authorizer == "NONE" and not callback.needs_auth
    assert callback.route_key == "POST /callbacks/{batch_id}/{row_id}"
    assert routes[("GET", "/batches")].authorizer == "AWS_IAM"
    assert routes[("GET", "/batches/{batch_id}")].needs_auth
    others = [r for key, r in routes.items() if key[1] != "/callbacks/{batch_id}/{row_id}"]
    assert all(r.authorizer == "AWS_IAM" for r in others)  # the Api's DefaultAuthorizer


def test_sqs_mappings_are_read_back_from_moto(deployed: Deployed) -> None:
    wiring = deployed.wiring
    by_function = {t.function_id: t for t in wiring.sqs_triggers}
    expected = dict(_sam_events(deployed.sam, "SQS"))
    assert (
        set(by_function)
        == set(expected)
        == {
            "WorkerFunction",
            "RecorderFunction",
            "NotifierFunction",
            "SaverFunction",
        }
    )
    sqs = deployed.aws.sqs()
    for function_id, props in expected.items():
        trigger = by_function[function_id]
        assert trigger.batch_size == props["BatchSize"]
        assert trigger.report_batch_item_failures
        queue_id = props["Queue"]["Fn::GetAtt"][0]  # type: ignore[index]
        arn = sqs.get_queue_attributes(QueueUrl=wiring.physical_ids[queue_id], AttributeNames=["QueueArn"])
        assert trigger.queue_arn == arn["Attributes"]["QueueArn"]
        assert sqs.get_queue_attributes(QueueUrl=trigger.queue_url, AttributeNames=["QueueArn"])
    assert by_function["WorkerFunction"].maximum_concurrency == 20
    assert wiring.physical_ids["FinishedRunQueue"].endswith(".fifo")


def test_s3_event_and_bucket_name_are_resolved(deployed: Deployed) -> None:
    (trigger,) = deployed.wiring.s3_triggers
    assert trigger.function_id == "IngestFunction"
    assert trigger.events == ("s3:ObjectCreated:*",)
    assert trigger.filter_rules == (("prefix", "uploads/"),)
    assert trigger.bucket == f"{STACK}-data-123456789012-us-east-1"
    s3 = deployed.aws.s3()
    s3.head_bucket(Bucket=trigger.bucket)
    # moto's CloudFormation ignores VersioningConfiguration; the deploy applies it.
    assert s3.get_bucket_versioning(Bucket=trigger.bucket)["Status"] == "Enabled"


def test_function_environments_are_resolved_by_moto(deployed: Deployed) -> None:
    functions = deployed.wiring.functions
    assert set(functions) == set(deployed.sam.resources("AWS::Serverless::Function"))
    worker = functions["WorkerFunction"].environment
    assert worker["CALLBACK_BASE_URL"] == CALLBACK_URL  # the template's !If, evaluated
    assert worker["PROVIDER_URL"] == PROVIDER_URL
    assert worker["PROVIDER_API_KEY_PARAM"] == deployed.sam.parameter_default("ProviderApiKeyParameter")
    ingest = functions["IngestFunction"].environment
    assert ingest["TABLE_NAME"] == deployed.wiring.only_physical_id("AWS::DynamoDB::Table")
    assert ingest["MAX_ROWS"] == deployed.sam.parameter_default("MaxRows")
    sqs = deployed.aws.sqs()
    for name in ("CHUNK_QUEUE_URL", "DONE_QUEUE_URL"):
        assert sqs.get_queue_attributes(QueueUrl=ingest[name], AttributeNames=["QueueArn"])
    # The template's default, as on AWS; only the local stack passes AllowLoopbackWebhooks=true.
    for name in ("IngestFunction", "NotifierFunction"):
        assert functions[name].environment["ALLOW_LOOPBACK_WEBHOOKS"] == "false"
    for function in functions.values():
        assert all(isinstance(v, str) for v in function.environment.values())
        assert function.handler == "app.lambda_handler"
        # Each runs on its own role (assumed under --enforce-iam), read back from moto.
        role = function.role_arn.rsplit("/", 1)[1]
        assert role.startswith(f"{STACK}-{function.logical_id.removesuffix('Function')}Role-")


def test_code_layers_timeouts_and_async_retries(deployed: Deployed) -> None:
    functions = deployed.wiring.functions
    ingest = functions["IngestFunction"]
    assert ingest.code_dir == PROJECT_ROOT / "functions" / "ingest"
    assert ingest.layer_dirs == (PROJECT_ROOT / "layers" / "rowcall",)
    assert ingest.timeout_s == deployed.sam.properties("IngestFunction")["Timeout"]
    invoke_config = deployed.sam.properties("IngestFunction")["EventInvokeConfig"]
    assert ingest.max_retry_attempts == invoke_config["MaximumRetryAttempts"]
    destination = invoke_config["DestinationConfig"]["OnFailure"]["Destination"]["Fn::GetAtt"][0]
    assert ingest.on_failure_queue_url == deployed.wiring.physical_ids[destination]
    sizes = {k: instance_count(f, deployed.wiring) for k, f in functions.items()}
    assert sizes == {
        "IngestFunction": 1,
        "WorkerFunction": 2,
        "WebhookFunction": 3,
        "RecorderFunction": 2,
        "NotifierFunction": 2,
        "SaverFunction": 2,
        "SafetyNetFunction": 1,
    }
    (schedule,) = deployed.wiring.schedule_triggers
    assert (schedule.function_id, schedule.every_s) == ("SafetyNetFunction", 60.0)


def test_what_moto_cannot_deploy_is_skipped_and_the_rest_is_deployed(deployed: Deployed) -> None:
    """moto's CloudFormation has no AWS::CloudWatch::Alarm (nor ApiGatewayV2, ...): those are skipped
    (cfn_deploy logs them); the log groups, the alarm topic and its key are deployed."""
    types = deployed.wiring.resource_types
    assert "AWS::CloudWatch::Alarm" not in types.values()
    assert "AWS::ApiGatewayV2::Api" not in types.values()
    for function_id in deployed.wiring.functions:
        assert types[f"{function_id}LogGroup"] == "AWS::Logs::LogGroup"
    assert types["AlarmTopic"] == "AWS::SNS::Topic" and types["AlarmKey"] == "AWS::KMS::Key"


def test_translation_swaps_local_folders_for_s3(deployed: Deployed) -> None:
    artifacts = deployed.sam.local_artifacts()
    assert artifacts["RowcallLayer"] == PROJECT_ROOT / "layers" / "rowcall"
    assert all(path.is_dir() for path in artifacts.values())
    for function_id in deployed.sam.resources("AWS::Serverless::Function"):
        code = deployed.cfn["Resources"][function_id]["Properties"]["Code"]
        assert code == {"S3Bucket": f"{STACK}-artifacts", "S3Key": function_id}


def test_secrets_are_stored_where_the_template_names_them(deployed: Deployed) -> None:
    secrets = StackSecrets()
    stored = put_secret_parameters(deployed.aws, deployed.sam, {}, secrets)
    ssm = deployed.aws.ssm()

    def value(parameter: str) -> str:
        found = ssm.get_parameter(Name=stored[parameter], WithDecryption=True)["Parameter"]
        assert found["Type"] == "SecureString"
        return found["Value"]

    assert (
        stored["ProviderApiKeyParameter"]
        == deployed.wiring.functions["WorkerFunction"].environment["PROVIDER_API_KEY_PARAM"]
    )
    assert value("ProviderApiKeyParameter") == secrets.provider_api_key
    assert value("CallbackSecretParameter") == secrets.callback_secret
    webhook_secret = value("WebhookSecretParameter")
    assert webhook_secret == secrets.webhook_secret
    assert len(base64.b64decode(webhook_secret.removeprefix("whsec_"))) == 32
    provider_webhook_secret = value("ProviderWebhookSecretParameter")
    assert provider_webhook_secret == secrets.provider_webhook_secret != webhook_secret
    assert len(base64.b64decode(provider_webhook_secret.removeprefix("whsec_"))) == 32


def test_sqs_settings_aws_would_refuse_are_refused_here_too() -> None:
    from rowcall_local.template_wiring import _sqs_mapping_problems

    worker = type("F", (), {"timeout_s": 300, "logical_id": "WorkerFunction"})()
    assert _sqs_mapping_problems(worker, {"BatchSize": 10}, visibility_timeout_s=1800) == []  # type: ignore[arg-type]
    problems = _sqs_mapping_problems(worker, {"BatchSize": 100}, visibility_timeout_s=200)  # type: ignore[arg-type]
    assert len(problems) == 2
    assert (
        _sqs_mapping_problems(  # type: ignore[arg-type]
            worker, {"BatchSize": 100, "MaximumBatchingWindowInSeconds": 1}, visibility_timeout_s=300
        )
        == []
    )
