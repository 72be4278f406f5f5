"""The whole local stack in one object: moto, provider emulator, deployed template, functions,
event sources and HTTP API. `rowcall up`, `rowcall demo` and tests all start it through here.
"""

from __future__ import annotations

import base64
import concurrent.futures
import fcntl
import json
import logging
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from rowcall_local.aws_clients import AwsEndpoint
from rowcall_local.aws_faults import FUNCTION_KEY_PREFIX
from rowcall_local.cfn_deploy import deploy_stack, upload_placeholder_artifacts
from rowcall_local.function_pool import FunctionPool, FunctionRuntime
from rowcall_local.function_runtime import InstanceSpec
from rowcall_local.http_api import HttpApi, HttpApiServer
from rowcall_local.moto_process import MotoProcess
from rowcall_local.provider_emulator import ProviderEmulator, ProviderFaults
from rowcall_local.queue_poller import QueuePoller
from rowcall_local.replicate_emulator import ReplicateEmulator
from rowcall_local.s3_event_source import S3EventSource, connect_bucket
from rowcall_local.sam_template import SamTemplate
from rowcall_local.schedule_source import ScheduleSource
from rowcall_local.sqs_event_source import SqsEventSource, take_over_from_moto
from rowcall_local.template_wiring import FunctionWiring, StackWiring, read_wiring
from rowcall_local.xray_daemon import XRAY_SEGMENTS_FILE, XRayDaemon

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ACCOUNT_ID = "123456789012"  # moto's default account

# Execution environments per function, by what drives it. Sized for a 2-core machine: HTTP
# requests are short and many; an SQS mapping the template scales out (ScalingConfig) gets two,
# any other queue or S3 consumer one. MaximumConcurrency still caps it.
INSTANCES_BY_SOURCE = {"HttpApi": 3, "SQS+ScalingConfig": 2, "SQS": 1, "S3": 1, "Schedule": 1}

# Template parameters the local stack sets (only those the template declares are passed).
PROVIDER_URL_PARAMETER = "ProviderBaseUrl"
CALLBACK_URL_PARAMETER = "CallbackBaseUrl"
MAX_ROWS_PARAMETER = "MaxRows"
MAX_BYTES_PARAMETER = "MaxBytes"
PROVIDER_KEY_PARAMETER = "ProviderApiKeyParameter"
CALLBACK_SECRET_PARAMETER = "CallbackSecretParameter"
WEBHOOK_SECRET_PARAMETER = "WebhookSecretParameter"
PROVIDER_WEBHOOK_SECRET_PARAMETER = "ProviderWebhookSecretParameter"
# The second provider (contract §5b): its emulator's root URL, API token and webhook signing secret.
REPLICATE_URL_PARAMETER = "ReplicateBaseUrl"
REPLICATE_TOKEN_PARAMETER = "ReplicateApiTokenParameter"
REPLICATE_WEBHOOK_SECRET_PARAMETER = "ReplicateWebhookSecretParameter"
# The template leaves these empty (Replicate not configured); with its emulator running the local
# stack configures it, under names like FLORA's defaults.
REPLICATE_SSM_NAMES = {
    REPLICATE_TOKEN_PARAMETER: "/rowcall/replicate-api-token",
    REPLICATE_WEBHOOK_SECRET_PARAMETER: "/rowcall/replicate-webhook-secret",
}
# The on-done receivers of the demo and the tests listen on 127.0.0.1 over http, which the
# functions refuse unless the template is told, through this parameter, that loopback is fine.
ALLOW_LOOPBACK_PARAMETER = "AllowLoopbackWebhooks"
BUCKET_PREFIX_PARAMETER = "BucketPrefix"

# What a Lambda execution environment has besides its function's variables, taken from ours.
INHERITED_ENVIRONMENT = frozenset(
    {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"}
)

STACK_JSON_KEYS = (
    "aws_endpoint_url",
    "region",
    "bucket",
    "table",
    "topic_arn",
    "api_url",
    "api_token",
    "provider_url",
    "webhook_secret",
    "provider_api_key",
    "provider_webhook_secret",
    "replicate_url",
    "replicate_api_token",
    "replicate_webhook_secret",
)


@dataclass(frozen=True)
class StackOptions:
    template: Path = PROJECT_ROOT / "template.yaml"
    state_dir: Path = Path(".rowcall")
    stack_name: str = "rowcall-local"
    region: str = "us-east-1"
    provider_faults: ProviderFaults | None = field(default_factory=ProviderFaults)
    """None: no provider emulator (a template that calls no provider)."""
    max_rows: int | None = None
    max_bytes: int | None = None
    max_in_flight: int | None = None
    reconcile_after_s: float | None = None
    callback_deadline_s: float | None = None
    chunk_rows: int | None = None
    crash_once: Mapping[str, float] = field(default_factory=dict)
    """Test-only: function logical id -> seconds after which its first invocation is killed."""
    crash_after_write: Mapping[str, str] = field(default_factory=dict)
    """Test-only: function logical id -> text; the first of its instances to make a DynamoDB write
    naming the text is killed right after it (crash_points.py), once per stack."""
    schedule_every_s: float | None = None
    """Fire scheduled functions this often instead of at the template's rate (tests, demos)."""
    parameters: Mapping[str, str] = field(default_factory=dict)
    """Further template parameter overrides."""
    instances: Mapping[str, int] = field(default_factory=dict)
    """Execution environments per function logical id, overriding INSTANCES_BY_SOURCE."""
    aws_fault_rate: float = 0.0
    """Fraction of the functions' AWS requests answered with AWS's errors under load (aws_faults.py)."""
    aws_fault_seed: int = 0
    enforce_iam: bool = False
    """Run each function with credentials assumed from its own role, and have the embedded AWS
    authorize them against it (iam_enforcement.py): a missing grant is AccessDenied, as on AWS."""
    xray_sample_rate: float | None = None
    """Test-only: the fraction of invocations X-Ray samples; None is Lambda's default rule."""


def _whole(seconds: float | None) -> int | None:
    return None if seconds is None else max(1, round(seconds))


def _whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class StackSecrets:
    provider_api_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    callback_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    webhook_secret: str = field(default_factory=_whsec)
    """Signs our on-done notifications (Standard Webhooks)."""
    api_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    provider_webhook_secret: str = field(default_factory=_whsec)
    """The provider emulator signs its run webhooks with it (`Flora-Signature`)."""
    replicate_api_token: str = field(default_factory=lambda: "r8_" + secrets.token_urlsafe(28))
    """The bearer token the Replicate emulator takes (Replicate's tokens start `r8_`)."""
    replicate_webhook_secret: str = field(default_factory=_whsec)
    """The Replicate emulator's account secret: it signs prediction webhooks (Standard Webhooks)."""


def instance_count(function: FunctionWiring, wiring: StackWiring) -> int:
    sources = set(function.event_types)
    caps = []
    for trigger in wiring.sqs_triggers:
        if trigger.function_id == function.logical_id and trigger.maximum_concurrency:
            sources.add("SQS+ScalingConfig")
            caps.append(trigger.maximum_concurrency)
    count = max((INSTANCES_BY_SOURCE.get(s, 1) for s in sources), default=1)
    return min([count, *caps])


def function_key(function: FunctionWiring) -> dict[str, str]:
    """A key of the function's own (`fn-<LogicalId>`): the fault injector tells its requests by it."""
    return {"AWS_ACCESS_KEY_ID": f"{FUNCTION_KEY_PREFIX}{function.logical_id}"}


ROLE_SESSION_SECONDS = 43200
"""moto never expires assumed-role credentials; the longest AWS allows, should a later moto start to."""


def role_credentials(aws: AwsEndpoint, function: FunctionWiring) -> dict[str, str]:
    """Credentials of the function's execution role, as Lambda gives a function: `sts:AssumeRole`
    on the role the deployed template gives it. The session is named `fn-<LogicalId>`, which is
    how the fault injector and the IAM decisions tell the function's requests apart."""
    if not function.role_arn:
        raise RuntimeError(f"{function.logical_id}: the deployed function has no role to assume")
    assumed = aws.sts().assume_role(
        RoleArn=function.role_arn,
        RoleSessionName=f"{FUNCTION_KEY_PREFIX}{function.logical_id}",
        DurationSeconds=ROLE_SESSION_SECONDS,
    )["Credentials"]
    return {
        "AWS_ACCESS_KEY_ID": assumed["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": assumed["SecretAccessKey"],
        "AWS_SESSION_TOKEN": assumed["SessionToken"],
    }


def put_secret_parameters(
    aws: AwsEndpoint, sam: SamTemplate, parameters: Mapping[str, str], stack_secrets: StackSecrets
) -> dict[str, str]:
    """Store the secrets as SSM SecureStrings under the names the template's parameters give.

    Returns parameter name -> SSM name for those the template declares.
    """
    ssm = aws.ssm()
    values = {
        PROVIDER_KEY_PARAMETER: stack_secrets.provider_api_key,
        CALLBACK_SECRET_PARAMETER: stack_secrets.callback_secret,
        WEBHOOK_SECRET_PARAMETER: stack_secrets.webhook_secret,
        PROVIDER_WEBHOOK_SECRET_PARAMETER: stack_secrets.provider_webhook_secret,
        REPLICATE_TOKEN_PARAMETER: stack_secrets.replicate_api_token,
        REPLICATE_WEBHOOK_SECRET_PARAMETER: stack_secrets.replicate_webhook_secret,
    }
    stored = {}
    for parameter, value in values.items():
        name = parameters.get(parameter) or sam.parameter_default(parameter)
        if name:
            ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
            stored[parameter] = name
    return stored


def _topic_the_functions_publish_to(wiring: StackWiring) -> str:
    """The on-done topic: the one topic a function is given (the alarm topic is CloudWatch's)."""
    named = {v for f in wiring.functions.values() for v in f.environment.values()}
    topics = [
        wiring.physical_ids[k]
        for k, t in wiring.resource_types.items()
        if t == "AWS::SNS::Topic" and wiring.physical_ids[k] in named
    ]
    return topics[0] if len(topics) == 1 else ""


def write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class LocalStack:
    """Start with `start()` (or `with LocalStack(options) as stack:`); `info` is stack.json's content."""

    def __init__(self, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        self.state_dir = self.options.state_dir.resolve()
        self.logs_dir = self.state_dir / "logs"
        self.stack_json = self.state_dir / "stack.json"
        self.secrets = StackSecrets()
        self.info: dict[str, str] = {}
        self.wiring: StackWiring | None = None
        self.aws = AwsEndpoint("", self.options.region)
        self.provider: ProviderEmulator | None = None
        self.replicate: ReplicateEmulator | None = None
        self.runtime: FunctionRuntime | None = None
        self._moto: MotoProcess | None = None
        self._http: HttpApiServer | None = None
        self._pollers: list[QueuePoller] = []
        self._schedules: list[ScheduleSource] = []
        self._s3_sources: list[S3EventSource] = []
        self._lock: IO[str] | None = None
        self._xray: XRayDaemon | None = None

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def moto_pid(self) -> int | None:
        return self._moto.pid if self._moto is not None else None

    def start(self) -> dict[str, str]:
        started = time.monotonic()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._claim_state_dir()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        log.info("local stack ready in %.1fs", time.monotonic() - started)
        return self.info

    def _claim_state_dir(self) -> None:
        """One stack per state dir; a stack.json left by a killed stack names dead ports, and
        whoever waits for the file must not mistake it for this stack's."""
        self._lock = (self.state_dir / ".lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise RuntimeError(f"another rowcall stack is running with state dir {self.state_dir}") from None
        self.stack_json.unlink(missing_ok=True)

    def _start(self) -> None:
        opts = self.options
        self._moto = MotoProcess(
            self.logs_dir / "moto.log", opts.aws_fault_rate, opts.aws_fault_seed, opts.enforce_iam
        )
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            moto_url = pool.submit(self._moto.start)
            sam = SamTemplate.load(opts.template)
            code_bucket = f"{opts.stack_name}-artifacts"
            cfn = sam.translate(code_bucket, opts.region)
            self.aws = AwsEndpoint(moto_url.result(), opts.region)
        self._http = HttpApiServer()
        # Tracing on, as `Tracing: Active` has it on AWS: segments go to the daemon stand-in.
        self._xray = XRayDaemon(self.logs_dir / XRAY_SEGMENTS_FILE)
        self._xray.start()
        if opts.provider_faults is not None:
            # The callbacks go to this stack's HTTP API on 127.0.0.1, which FLORA itself would refuse.
            self.provider = ProviderEmulator(
                self.secrets.provider_api_key,
                opts.provider_faults,
                webhook_secret=self.secrets.provider_webhook_secret,
                allow_loopback_callbacks=True,
            )
            self.provider.start()
            # Replicate beside it, with the same faults; its webhooks come to the same loopback API.
            self.replicate = ReplicateEmulator(
                self.secrets.replicate_api_token,
                opts.provider_faults,
                webhook_secret=self.secrets.replicate_webhook_secret,
                allow_loopback_webhooks=True,
            )
            self.replicate.start()
        upload_placeholder_artifacts(self.aws, code_bucket, sam.local_artifacts())
        parameters = self._parameters(sam)
        physical = deploy_stack(self.aws, opts.stack_name, cfn, parameters)
        put_secret_parameters(self.aws, sam, parameters, self.secrets)
        wiring = self.wiring = read_wiring(sam, cfn, physical, self.aws, opts.stack_name)
        credentials = {
            f.logical_id: role_credentials(self.aws, f) if opts.enforce_iam else function_key(f)
            for f in wiring.functions.values()
        }
        self.runtime = FunctionRuntime(
            {
                f.logical_id: FunctionPool(
                    self._instance_spec(f, credentials[f.logical_id]),
                    opts.instances.get(f.logical_id) or instance_count(f, wiring),
                    crash_once_after_s=opts.crash_once.get(f.logical_id),
                )
                for f in wiring.functions.values()
            }
        )
        self.runtime.start()
        self._start_event_sources(wiring, self.runtime)
        self.info = self._describe(wiring)
        write_json_atomically(self.stack_json, self.info)

    def _parameters(self, sam: SamTemplate) -> dict[str, str]:
        assert self._http is not None
        wanted: dict[str, str | int | float | None] = {
            # The emulator speaks plain http on loopback; on AWS the parameter takes only https.
            PROVIDER_URL_PARAMETER: self.provider.url if self.provider else None,
            REPLICATE_URL_PARAMETER: self.replicate.url if self.replicate else None,
            **(REPLICATE_SSM_NAMES if self.replicate else {}),
            BUCKET_PREFIX_PARAMETER: self.options.stack_name,
            CALLBACK_URL_PARAMETER: self._http.url,
            MAX_ROWS_PARAMETER: self.options.max_rows,
            MAX_BYTES_PARAMETER: self.options.max_bytes,
            ALLOW_LOOPBACK_PARAMETER: "true",
            "ReconcileAfterSeconds": _whole(self.options.reconcile_after_s),
            "CallbackDeadlineSeconds": _whole(self.options.callback_deadline_s),
            "ChunkRows": self.options.chunk_rows,
            "MaxInFlight": self.options.max_in_flight,
            **self.options.parameters,
        }
        return {k: str(v) for k, v in wanted.items() if v is not None and sam.declares_parameter(k)}

    def _instance_spec(self, function: FunctionWiring, credentials: Mapping[str, str]) -> InstanceSpec:
        inherited = {k: v for k, v in os.environ.items() if k in INHERITED_ENVIRONMENT}
        environment = {
            **inherited,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "AWS_LAMBDA_FUNCTION_NAME": function.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function.name}",
            "LAMBDA_TASK_ROOT": str(function.code_dir),
            "_HANDLER": function.handler,
            # What Lambda sets for a function with active tracing (the trace header itself is set
            # per invocation, function_runtime.serve).
            **self._tracing_environment(),
            **self.aws.environment(),
            # Its own credentials, so the embedded AWS knows the function's requests from the runtime's.
            **credentials,
            **function.environment,
        }
        return InstanceSpec(
            function_id=function.logical_id,
            function_name=function.name,
            function_arn=function.arn,
            handler=function.handler,
            code_dir=str(function.code_dir),
            layer_dirs=tuple(str(d) for d in function.layer_dirs),
            environment=environment,
            memory_mb=function.memory_mb,
            timeout_s=function.timeout_s,
            log_path=str(self.logs_dir / f"{function.logical_id}.log"),
            xray_sample_rate=self.options.xray_sample_rate,
            crash_after_write=self._crash_point(function.logical_id),
        )

    def _crash_point(self, logical_id: str) -> tuple[str, str] | None:
        text = self.options.crash_after_write.get(logical_id)
        if text is None:
            return None
        return text, str(self.state_dir / f"crashed-after-write-{logical_id}")

    def _tracing_environment(self) -> dict[str, str]:
        if self._xray is None:
            return {"POWERTOOLS_TRACE_DISABLED": "true"}
        return {"AWS_XRAY_DAEMON_ADDRESS": self._xray.address, "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR"}

    def _start_event_sources(self, wiring: StackWiring, runtime: FunctionRuntime) -> None:
        assert self._http is not None
        self._add_sqs_sources(wiring, runtime)
        if wiring.s3_triggers:
            self._add_s3_sources(wiring, runtime)
        for poller in self._pollers:
            poller.start()
        for trigger in wiring.schedule_triggers:
            schedule = ScheduleSource(
                trigger,
                runtime.invoke,
                every_s=self.options.schedule_every_s or trigger.every_s,
                region=self.options.region,
                account=ACCOUNT_ID,
            )
            self._schedules.append(schedule)
            schedule.start()
        api_id = wiring.only_physical_id("AWS::ApiGatewayV2::Api") or "local"
        self._http.serve(HttpApi(wiring.routes, runtime.invoke, self.secrets.api_token, api_id, ACCOUNT_ID))

    def _add_sqs_sources(self, wiring: StackWiring, runtime: FunctionRuntime) -> None:
        take_over_from_moto(self.aws.lambda_(), wiring.sqs_triggers)
        for trigger in wiring.sqs_triggers:
            sqs = self.aws.sqs()
            source = SqsEventSource(trigger, sqs, runtime.invoke, self.options.region)
            self._pollers.append(
                QueuePoller(
                    f"sqs-{trigger.function_id}",
                    sqs,
                    trigger.queue_url,
                    trigger.batch_size,
                    runtime.pools[trigger.function_id].size,
                    source.handle,
                )
            )

    def _add_s3_sources(self, wiring: StackWiring, runtime: FunctionRuntime) -> None:
        sqs = self.aws.sqs()
        queues = connect_bucket(
            self.aws.s3(),
            sqs,
            wiring.stack_name,
            wiring.s3_triggers,
            lambda t: wiring.functions[t.function_id].timeout_s,
        )
        for trigger, queue_url in queues.items():
            source = S3EventSource(
                trigger, wiring.functions[trigger.function_id], sqs, queue_url, runtime.invoke
            )
            self._s3_sources.append(source)
            self._pollers.append(
                QueuePoller(
                    f"s3-{trigger.function_id}",
                    sqs,
                    queue_url,
                    10,
                    runtime.pools[trigger.function_id].size,
                    source.handle,
                )
            )

    def _describe(self, wiring: StackWiring) -> dict[str, str]:
        assert self._http is not None
        bucket = (
            wiring.s3_triggers[0].bucket if wiring.s3_triggers else wiring.only_physical_id("AWS::S3::Bucket")
        )
        info = {
            "aws_endpoint_url": self.aws.url,
            "region": self.options.region,
            "bucket": bucket or "",
            "table": wiring.only_physical_id("AWS::DynamoDB::Table") or "",
            "topic_arn": _topic_the_functions_publish_to(wiring),
            "api_url": self._http.url,
            "api_token": self.secrets.api_token,
            "provider_url": self.provider.url if self.provider else "",
            "webhook_secret": self.secrets.webhook_secret,
            "provider_api_key": self.secrets.provider_api_key,
            "provider_webhook_secret": self.secrets.provider_webhook_secret,
            "replicate_url": self.replicate.url if self.replicate else "",
            "replicate_api_token": self.secrets.replicate_api_token,
            "replicate_webhook_secret": self.secrets.replicate_webhook_secret,
        }
        assert tuple(info) == STACK_JSON_KEYS
        return info

    def stop(self) -> None:
        """Stop everything in bounded time (~10 s at worst); safe to call more than once."""
        if self.info:
            self.stack_json.unlink(missing_ok=True)
            self.info = {}
        for source in self._s3_sources:
            source.request_stop()
        for poller in self._pollers:
            poller.request_stop()
        for schedule in self._schedules:
            schedule.request_stop()
        if self._http is not None:
            self._http.stop()
            self._http = None
        if self.runtime is not None:
            self.runtime.stop()
            self.runtime = None
        deadline = time.monotonic() + 3.0
        for poller in self._pollers:
            poller.join(deadline)
        self._pollers.clear()
        for schedule in self._schedules:
            schedule.join(deadline)
        self._schedules.clear()
        self._s3_sources.clear()
        if self.provider is not None:
            self.provider.stop()
            self.provider = None
        if self.replicate is not None:
            self.replicate.stop()
            self.replicate = None
        if self._xray is not None:
            self._xray.stop()
            self._xray = None
        if self._moto is not None:
            self._moto.stop()
            self._moto = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None
