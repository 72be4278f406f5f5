"""What the deployed template wires together: functions, their event sources and routes.

Static facts (code folders, S3 events, HTTP routes) come from the SAM template; everything moto
resolves (physical names, environments with !Ref/!GetAtt/!If evaluated, event source mappings)
is read back from moto, so nothing here restates a name from the template by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rowcall_local.aws_clients import AwsEndpoint
from rowcall_local.sam_template import FUNCTION, Json, SamTemplate, TemplateError

DEFAULT_ASYNC_RETRIES = 2  # Lambda's default for asynchronous invocations


@dataclass(frozen=True)
class FunctionWiring:
    logical_id: str
    name: str
    arn: str
    role_arn: str
    handler: str
    code_dir: Path
    layer_dirs: tuple[Path, ...]
    timeout_s: int
    memory_mb: int
    environment: dict[str, str]
    event_types: frozenset[str]
    max_retry_attempts: int
    on_failure_queue_url: str | None


@dataclass(frozen=True)
class HttpRoute:
    function_id: str
    method: str
    path: str
    authorizer: str

    @property
    def route_key(self) -> str:
        return "$default" if self.path == "$default" else f"{self.method} {self.path}"

    @property
    def needs_auth(self) -> bool:
        return self.authorizer != "NONE"


@dataclass(frozen=True)
class S3Trigger:
    function_id: str
    event_name: str
    bucket: str
    events: tuple[str, ...]
    filter_rules: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SqsTrigger:
    mapping_uuid: str
    function_id: str
    queue_url: str
    queue_arn: str
    batch_size: int
    report_batch_item_failures: bool
    maximum_concurrency: int | None


@dataclass(frozen=True)
class ScheduleTrigger:
    function_id: str
    event_name: str
    every_s: float


_RATE_UNITS = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600, "day": 86400, "days": 86400}


def rate_seconds(expression: str) -> float:
    """EventBridge's `rate(N unit)`; cron expressions are not run locally."""
    inner = expression.strip()
    if not (inner.startswith("rate(") and inner.endswith(")")):
        raise TemplateError(f"only rate() schedules run locally, not {expression!r}")
    count, _, unit = inner[5:-1].strip().partition(" ")
    if not count.isdigit() or unit not in _RATE_UNITS or int(count) < 1:
        raise TemplateError(f"not an EventBridge rate expression: {expression!r}")
    if (int(count) == 1) == unit.endswith("s"):
        raise TemplateError(f"EventBridge wants 'rate(1 minute)' or 'rate(N minutes)', not {expression!r}")
    return float(int(count) * _RATE_UNITS[unit])


@dataclass(frozen=True)
class StackWiring:
    stack_name: str
    functions: dict[str, FunctionWiring]
    routes: tuple[HttpRoute, ...]
    s3_triggers: tuple[S3Trigger, ...]
    sqs_triggers: tuple[SqsTrigger, ...]
    schedule_triggers: tuple[ScheduleTrigger, ...]
    physical_ids: dict[str, str]
    resource_types: dict[str, str]

    def only_physical_id(self, resource_type: str) -> str | None:
        """The physical id of the one resource of this type, or None if there is not exactly one."""
        found = [self.physical_ids[k] for k, t in self.resource_types.items() if t == resource_type]
        return found[0] if len(found) == 1 else None


def _events(sam: SamTemplate, function_id: str, event_type: str) -> list[tuple[str, Json]]:
    events: dict[str, Json] = sam.properties(function_id).get("Events") or {}
    return [(name, e.get("Properties") or {}) for name, e in events.items() if e.get("Type") == event_type]


def _environment(function_id: str, variables: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for key, value in variables.items():
        if isinstance(value, dict | list) or (isinstance(value, str) and "${" in value):
            raise TemplateError(f"{function_id}: moto left {key} unresolved: {value!r}")
        env[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def _ref_target(value: Any) -> str | None:
    """Logical id named by `!Ref X` or `!GetAtt X.Arn`."""
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("Ref"), str):
        return str(value["Ref"])
    att = value.get("Fn::GetAtt")
    if isinstance(att, str):
        att = att.split(".", 1)
    if isinstance(att, list) and len(att) == 2 and att[1] == "Arn":
        return str(att[0])
    return None


class _Reader:
    def __init__(self, sam: SamTemplate, cfn: Json, physical: dict[str, str], aws: AwsEndpoint) -> None:
        self.sam, self.cfn, self.physical, self.aws = sam, cfn, physical, aws
        self.sqs = aws.sqs()
        self.lambda_ = aws.lambda_()

    def queue_url_for_arn(self, arn: str) -> str:
        parts = arn.split(":")
        return self.sqs.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])["QueueUrl"]

    def queue_url(self, value: Any) -> str | None:
        if isinstance(value, str) and value.startswith("arn:aws:sqs:"):
            return self.queue_url_for_arn(value)
        target = _ref_target(value)
        if target and self.cfn["Resources"].get(target, {}).get("Type") == "AWS::SQS::Queue":
            return self.physical[target]  # a queue's physical id is its URL
        return None

    def function(self, function_id: str) -> FunctionWiring:
        config = self.lambda_.get_function_configuration(FunctionName=self.physical[function_id])
        invoke_config: Json = self.sam.function_property(function_id, "EventInvokeConfig") or {}
        on_failure: Json = (invoke_config.get("DestinationConfig") or {}).get("OnFailure") or {}
        events: dict[str, Json] = self.sam.properties(function_id).get("Events") or {}
        return FunctionWiring(
            logical_id=function_id,
            name=config["FunctionName"],
            arn=config["FunctionArn"],
            role_arn=config.get("Role", ""),
            handler=config["Handler"],
            code_dir=self.sam.code_dir(function_id),
            layer_dirs=tuple(self.sam.layer_dirs(function_id)),
            timeout_s=int(config.get("Timeout", 3)),
            memory_mb=int(config.get("MemorySize", 128)),
            environment=_environment(function_id, dict(config.get("Environment", {}).get("Variables", {}))),
            event_types=frozenset(str(e.get("Type")) for e in events.values()),
            max_retry_attempts=int(invoke_config.get("MaximumRetryAttempts", DEFAULT_ASYNC_RETRIES)),
            on_failure_queue_url=(
                self.queue_url(on_failure.get("Destination")) if on_failure.get("Type") == "SQS" else None
            ),
        )

    def routes(self, function_id: str) -> list[HttpRoute]:
        routes = []
        for _, props in _events(self.sam, function_id, "HttpApi"):
            api_id = _ref_target(props.get("ApiId"))
            api_auth: Json = (
                (self.sam.properties(api_id).get("Auth") or {})
                if api_id
                else self.sam.globals("HttpApi").get("Auth") or {}
            )
            authorizer = (
                (props.get("Auth") or {}).get("Authorizer") or api_auth.get("DefaultAuthorizer") or "NONE"
            )
            path = props.get("Path")
            method = str(props.get("Method") or "ANY").upper()
            routes.append(
                HttpRoute(
                    function_id,
                    "ANY" if method == "X-AMAZON-APIGATEWAY-ANY-METHOD" else method,
                    str(path) if path else "$default",
                    str(authorizer),
                )
            )
        return routes

    def s3_triggers(self, function_id: str) -> list[S3Trigger]:
        triggers = []
        for name, props in _events(self.sam, function_id, "S3"):
            bucket_id = _ref_target(props.get("Bucket"))
            if bucket_id is None:
                raise TemplateError(f"{function_id}.{name}: S3 event Bucket must be !Ref of a bucket here")
            events = props.get("Events")
            rules = ((props.get("Filter") or {}).get("S3Key") or {}).get("Rules") or []
            triggers.append(
                S3Trigger(
                    function_id=function_id,
                    event_name=name,
                    bucket=self.physical[bucket_id],
                    events=tuple(str(e) for e in (events if isinstance(events, list) else [events])),
                    filter_rules=tuple((str(r["Name"]), str(r["Value"])) for r in rules),
                )
            )
        return triggers

    def sqs_triggers(self, functions: dict[str, FunctionWiring]) -> list[SqsTrigger]:
        by_arn = {f.arn: f.logical_id for f in functions.values()}
        triggers = []
        paginator = self.lambda_.get_paginator("list_event_source_mappings")
        for page in paginator.paginate():
            for mapping in page["EventSourceMappings"]:
                function_id = by_arn.get(mapping.get("FunctionArn", ""))
                arn = mapping.get("EventSourceArn", "")
                if (
                    function_id is None
                    or not arn.startswith("arn:aws:sqs:")
                    or mapping.get("State") == "Disabled"
                ):
                    continue
                self._check_sqs_mapping(functions[function_id], mapping, arn)
                triggers.append(
                    SqsTrigger(
                        mapping_uuid=mapping["UUID"],
                        function_id=function_id,
                        queue_url=self.queue_url_for_arn(arn),
                        queue_arn=arn,
                        batch_size=int(mapping.get("BatchSize", 10)),
                        report_batch_item_failures="ReportBatchItemFailures"
                        in mapping.get("FunctionResponseTypes", []),
                        maximum_concurrency=mapping.get("ScalingConfig", {}).get("MaximumConcurrency"),
                    )
                )
        return triggers

    def _check_sqs_mapping(self, function: FunctionWiring, mapping: Mapping[str, Any], arn: str) -> None:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url_for_arn(arn), AttributeNames=["VisibilityTimeout"]
        )["Attributes"]
        problems = _sqs_mapping_problems(function, mapping, int(attributes.get("VisibilityTimeout", 30)))
        if problems:
            raise TemplateError(f"{function.logical_id}: SQS event source: " + "; ".join(problems))


MAX_SQS_BATCH_WITHOUT_WINDOW = 10


def _sqs_mapping_problems(
    function: FunctionWiring, mapping: Mapping[str, Any], visibility_timeout_s: int
) -> list[str]:
    """What AWS refuses at deploy time that cfn-lint lets through (facts.md): checked here so the
    local stack does not run a template that would not deploy."""
    problems = []
    batch_size = int(mapping.get("BatchSize", 10))
    window = int(mapping.get("MaximumBatchingWindowInSeconds", 0) or 0)
    if batch_size > MAX_SQS_BATCH_WITHOUT_WINDOW and window < 1:
        problems.append(f"BatchSize {batch_size} > 10 needs MaximumBatchingWindowInSeconds >= 1")
    if visibility_timeout_s < function.timeout_s:
        problems.append(
            f"the queue's VisibilityTimeout ({visibility_timeout_s}s) is shorter than the function's "
            f"Timeout ({function.timeout_s}s)"
        )
    return problems


def read_wiring(
    sam: SamTemplate, cfn: Json, physical: dict[str, str], aws: AwsEndpoint, stack_name: str
) -> StackWiring:
    """Read the deployed stack's wiring back from moto and the template."""
    reader = _Reader(sam, cfn, physical, aws)
    function_ids = [k for k in sam.resources(FUNCTION) if k in physical]
    functions = {k: reader.function(k) for k in function_ids}
    return StackWiring(
        stack_name=stack_name,
        functions=functions,
        routes=tuple(r for k in function_ids for r in reader.routes(k)),
        s3_triggers=tuple(t for k in function_ids for t in reader.s3_triggers(k)),
        sqs_triggers=tuple(reader.sqs_triggers(functions)),
        schedule_triggers=tuple(
            ScheduleTrigger(k, name, rate_seconds(str(props.get("Schedule"))))
            for k in function_ids
            for name, props in _events(sam, k, "Schedule")
            if props.get("Enabled", True) is not False
        ),
        physical_ids=dict(physical),
        resource_types={k: str(v.get("Type")) for k, v in cfn["Resources"].items() if k in physical},
    )
