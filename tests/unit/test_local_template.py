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
from rowcall_local.stack import (
    PROJECT_ROOT,
    REPLICATE_SSM_NAMES,
    StackSecrets,
    instance_count,
    put_secret_parameters,
)
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
    # The stack id's first 8 hex digits end the name: new for every stack created.
    stack_id = deployed.aws.cloudformation().describe_stacks(StackName=STACK)["Stacks"][0]["StackId"]
    assert trigger.bucket == f"{STACK}-123456789012-us-east-1-{stack_id.rsplit('/', 1)[1][:8]}"
    assert trigger.bucket == deployed.wiring.physical_ids["DataBucket"]
    assert deployed.wiring.functions["WebhookFunction"].environment["DATA_BUCKET"] == trigger.bucket
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


def test_replicate_is_configured_only_where_the_local_stack_names_its_parameters(deployed: Deployed) -> None:
    """The template leaves Replicate's token and secret parameters empty (not configured); the
    local stack names them when its Replicate emulator runs, and stores both there."""
    secrets = StackSecrets()
    unnamed = put_secret_parameters(deployed.aws, deployed.sam, {}, secrets)
    assert not set(REPLICATE_SSM_NAMES) & set(unnamed)
    stored = put_secret_parameters(deployed.aws, deployed.sam, REPLICATE_SSM_NAMES, secrets)
    ssm = deployed.aws.ssm()
    for parameter, value in [
        ("ReplicateApiTokenParameter", secrets.replicate_api_token),
        ("ReplicateWebhookSecretParameter", secrets.replicate_webhook_secret),
    ]:
        assert stored[parameter] == REPLICATE_SSM_NAMES[parameter]
        found = ssm.get_parameter(Name=stored[parameter], WithDecryption=True)["Parameter"]
        assert (found["Type"], found["Value"]) == ("SecureString", value)
    assert secrets.replicate_api_token.startswith("r8_")
    assert len(base64.b64decode(secrets.replicate_webhook_secret.removeprefix("whsec_"))) == 32


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


# Lambda keeps this much of an account's concurrency unreserved: a stack reserving N needs a quota
# of at least 100 + N, and new accounts often start at 10 (the Lambda developer guide, "Lambda
# quotas" and "Configuring reserved concurrency").
LAMBDA_UNRESERVED_MINIMUM = 100


def _condition_holds(cfn: dict[str, Any], name: str, parameters: dict[str, str]) -> bool:
    """Evaluates a template condition (Fn::Not / Fn::Equals / Ref / Condition) at the given parameters."""

    def value(node: Any) -> Any:
        if isinstance(node, dict) and set(node) == {"Ref"}:
            return parameters[node["Ref"]]
        if isinstance(node, dict) and set(node) == {"Condition"}:
            return _condition_holds(cfn, node["Condition"], parameters)
        if isinstance(node, dict) and set(node) == {"Fn::Not"}:
            return not value(node["Fn::Not"][0])
        if isinstance(node, dict) and set(node) == {"Fn::Equals"}:
            left, right = node["Fn::Equals"]
            return str(value(left)) == str(value(right))
        if isinstance(node, dict):
            raise AssertionError(f"condition {name}: unsupported {node}")
        return node

    return bool(value(cfn["Conditions"][name]))


def _reservations(cfn: dict[str, Any], parameters: dict[str, str]) -> dict[str, int]:
    """Each function's ReservedConcurrentExecutions as CloudFormation would set it, 0 when left out."""
    found = {}
    for logical_id, resource in cfn["Resources"].items():
        if resource["Type"] != "AWS::Lambda::Function":
            continue
        reserved = resource["Properties"].get("ReservedConcurrentExecutions")
        if isinstance(reserved, dict) and "Fn::If" in reserved:
            condition, when_true, when_false = reserved["Fn::If"]
            reserved = when_true if _condition_holds(cfn, condition, parameters) else when_false
        if isinstance(reserved, dict) and reserved.get("Ref") == "AWS::NoValue":
            reserved = None
        if isinstance(reserved, dict) and "Ref" in reserved:
            reserved = parameters[reserved["Ref"]]
        found[logical_id] = int(reserved or 0)
    return found


def _defaults(sam: SamTemplate) -> dict[str, str]:
    return {name: str(p.get("Default", "")) for name, p in sam.document["Parameters"].items()}


def test_default_deploy_reserves_no_concurrency_so_any_account_quota_takes_it() -> None:
    """On an account at the 10 new accounts start with, any reservation fails the deploy: Lambda
    refuses to let unreserved concurrency drop below 100. So the defaults reserve nothing, and every
    reservation is a parameter that leaves the property out (AWS::NoValue) at 0."""
    sam = SamTemplate.load(PROJECT_ROOT / "template.yaml")
    cfn = sam.translate("artifacts", "us-east-1")
    defaults = _defaults(sam)
    reservations = _reservations(cfn, defaults)
    assert len(reservations) == 7  # every function, the saver included
    # The account quota the defaults need: the 100 Lambda keeps unreserved plus the reservations.
    assert LAMBDA_UNRESERVED_MINIMUM + sum(reservations.values()) == LAMBDA_UNRESERVED_MINIMUM, reservations
    # Every reservation is opt-in through a parameter, and opting in reserves exactly what is asked.
    for logical_id, resource in cfn["Resources"].items():
        reserved = resource["Properties"].get("ReservedConcurrentExecutions")
        if resource["Type"] != "AWS::Lambda::Function" or reserved is None:
            continue
        _condition, when_true, when_false = reserved["Fn::If"]
        assert when_false == {"Ref": "AWS::NoValue"}, logical_id
        parameter = when_true["Ref"]
        assert sam.document["Parameters"][parameter]["MinValue"] == 0
        assert _reservations(cfn, {**defaults, parameter: "3"})[logical_id] == 3
        assert _reservations(cfn, {**defaults, parameter: "0"})[logical_id] == 0


def test_caps_that_need_no_reservation_stay_on() -> None:
    sam = SamTemplate.load(PROJECT_ROOT / "template.yaml")
    for function_id in ("WorkerFunction", "RecorderFunction", "NotifierFunction"):
        (event,) = sam.properties(function_id)["Events"].values()
        assert event["Type"] == "SQS"
        assert event["Properties"]["ScalingConfig"]["MaximumConcurrency"] >= 2, function_id
    api = sam.properties("Api")
    assert api["DefaultRouteSettings"]["ThrottlingRateLimit"] > 0
    assert api["RouteSettings"]["POST /callbacks/{batch_id}/{row_id}"]["ThrottlingBurstLimit"] > 0


# Lambda's retry delays for an async invocation that failed: about 1 minute, then about 2 (Lambda
# developer guide, "Configuring error handling for asynchronous invocation").
ASYNC_RETRY_DELAYS_S = (60, 120)


def test_the_sweeps_stalled_ingest_threshold_follows_the_ingests_event_age(deployed: Deployed) -> None:
    """The sweep fails a quiet ingest only after Lambda can start no attempt of its S3 event: the
    event age the ingest's EventInvokeConfig sets, plus its timeout - read from the deployed stack."""
    from rowcall.safety_net import INGEST_STALL_MARGIN_S, ingest_stall_after
    from rowcall.settings import SafetyNetSettings

    ingest = deployed.sam.properties("IngestFunction")
    invoke_config = ingest["EventInvokeConfig"]
    retries = invoke_config["MaximumRetryAttempts"]
    age_parameter = invoke_config["MaximumEventAgeInSeconds"]["Ref"]
    declared = deployed.sam.document["Parameters"][age_parameter]
    # Every attempt Lambda may make fits in the event's age, at the smallest age a deploy may pick.
    assert declared["MinValue"] >= (retries + 1) * ingest["Timeout"] + sum(ASYNC_RETRY_DELAYS_S[:retries])
    assert declared["MaxValue"] <= 6 * 3600  # Lambda's own limit (and default)
    env = deployed.aws.lambda_().get_function_configuration(
        FunctionName=deployed.wiring.physical_ids["SafetyNetFunction"]
    )["Environment"]["Variables"]
    settings = SafetyNetSettings.model_validate(env)
    assert settings.ingest_max_event_age_s == float(declared["Default"])
    assert settings.ingest_timeout_s == ingest["Timeout"]
    assert ingest_stall_after(settings.ingest_max_event_age_s, settings.ingest_timeout_s) == (
        float(declared["Default"]) + ingest["Timeout"] + INGEST_STALL_MARGIN_S
    )


def test_deleting_the_stack_and_deploying_it_again_keeps_the_retained_data(deployed: Deployed) -> None:
    """The table and bucket are retained on delete; a stack created again under the same name gets
    a bucket of its own (its name carries the stack id) and a new table, and the retained ones stay
    with their data. Last in this module: it replaces the module's stack."""
    aws, cfn = deployed.aws, deployed.aws.cloudformation()
    old_bucket = deployed.wiring.physical_ids["DataBucket"]
    old_table = deployed.wiring.only_physical_id("AWS::DynamoDB::Table")
    s3 = aws.s3()
    s3.put_object(Bucket=old_bucket, Key="uploads/kept.csv", Body=b"id\n1\n")
    cfn.delete_stack(StackName=STACK)
    assert cfn.list_stacks(StackStatusFilter=["DELETE_COMPLETE"])["StackSummaries"]
    parameters = {"ProviderBaseUrl": PROVIDER_URL, "CallbackBaseUrl": CALLBACK_URL, "BucketPrefix": STACK}
    physical = deploy_stack(aws, STACK, deployed.cfn, parameters)
    wiring = read_wiring(deployed.sam, deployed.cfn, physical, aws, STACK)
    new_bucket = physical["DataBucket"]
    assert new_bucket != old_bucket and new_bucket.startswith(f"{STACK}-123456789012-us-east-1-")
    assert len(new_bucket) <= 63
    assert wiring.functions["WebhookFunction"].environment["DATA_BUCKET"] == new_bucket
    assert wiring.only_physical_id("AWS::DynamoDB::Table") != old_table
    # What was retained is still there, as it was.
    assert s3.get_object(Bucket=old_bucket, Key="uploads/kept.csv")["Body"].read() == b"id\n1\n"
    assert old_table in aws._client("dynamodb").list_tables()["TableNames"]
    # The new stack's roles name its own bucket: the new ingest may read its uploads.
    role = aws._client("iam").get_role_policy(
        RoleName=wiring.functions["IngestFunction"].role_arn.rsplit("/", 1)[1], PolicyName="IngestFunction"
    )["PolicyDocument"]
    # (moto hands back the inline policy CloudFormation gave it as written, a dict or its repr)
    assert f"arn:aws:s3:::{new_bucket}/uploads/*" in str(role)
    assert old_bucket not in str(role)


def test_what_only_aws_checks_holds_its_documented_shape() -> None:
    """docs/architecture.md, "What only AWS checks": what neither moto nor the local runtime judges."""
    import re

    sam = SamTemplate.load(PROJECT_ROOT / "template.yaml")
    cfn = sam.translate("artifacts", "us-east-1")
    resources = cfn["Resources"]
    # CloudWatch may use the alarm topic's key (SNS "Key management"); the topic uses that key.
    (key,) = [r for r in resources.values() if r["Type"] == "AWS::KMS::Key"]
    (cloudwatch,) = [
        s
        for s in key["Properties"]["KeyPolicy"]["Statement"]
        if s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}
    ]
    assert set(cloudwatch["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    assert set(cloudwatch["Condition"]) == {"StringEquals", "ArnLike"}
    assert resources["AlarmTopic"]["Properties"]["KmsMasterKeyId"] == {"Ref": "AlarmKey"}
    for alarm in (r for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"):
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    # EventBridge invokes the sweep through the function's resource policy, from its own rule.
    (rule_id,) = [k for k, r in resources.items() if r["Type"] == "AWS::Events::Rule"]
    (permission,) = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::Permission" and r["Properties"]["Principal"] == "events.amazonaws.com"
    ]
    assert permission["SourceArn"] == {"Fn::GetAtt": [rule_id, "Arn"]}
    assert permission["FunctionName"] == {"Ref": "SafetyNetFunction"}
    # Log group names: 1-512 of [A-Za-z0-9_-/.#] with the longest stack name (128 characters).
    longest_stack = "s" + "-" * 126 + "s"
    for group in (r for r in resources.values() if r["Type"] == "AWS::Logs::LogGroup"):
        name = group["Properties"]["LogGroupName"]["Fn::Sub"].replace("${AWS::StackName}", longest_stack)
        assert re.fullmatch(r"[A-Za-z0-9_\-/.#]{1,512}", name), name
    # The layer is built for, and declared compatible with, the functions' architecture.
    layer = sam.resources("AWS::Serverless::LayerVersion")["RowcallLayer"]
    architectures = sam.globals("Function")["Architectures"]
    assert layer["Properties"]["CompatibleArchitectures"] == architectures
    assert [layer["Metadata"]["BuildArchitecture"]] == architectures
    for logical_id in sam.resources("AWS::Serverless::Function"):
        assert sam.function_property(logical_id, "Architectures") == architectures
