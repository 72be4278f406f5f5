"""Least privilege, read off the translated template: what each function's role may do, and on what.

The e2e test `tests/e2e/test_least_privilege.py` runs a batch with every function on its own role;
this one holds the roles to their shape, including what no local run exercises (the SQS event
source mappings' polling, the ingest function's failure destination).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from rowcall_local.sam_template import SamTemplate
from rowcall_local.stack import PROJECT_ROOT

Json = dict[str, Any]

# Statements AWS only accepts on "Resource": "*", each with the reason.
STAR_RESOURCE_ACTIONS = {
    "xray:PutTraceSegments": "X-Ray has no resource-level permissions (Tracing: Active needs it)",
    "xray:PutTelemetryRecords": "X-Ray has no resource-level permissions (Tracing: Active needs it)",
}
# What Lambda's SQS event source mapping polls with, from the function's role (the Lambda developer
# guide's list; SAM's AWSLambdaSQSQueueExecutionRole grants the same on every queue).
SQS_POLLING = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
BUCKET = "${BucketPrefix}-${AWS::AccountId}-${AWS::Region}-${Deployment}"
# The stack id's first 8 hex digits: new for every stack created (a redeploy after a delete).
DEPLOYMENT = {
    "Deployment": {
        "Fn::Select": [
            0,
            {"Fn::Split": ["-", {"Fn::Select": [2, {"Fn::Split": ["/", {"Ref": "AWS::StackId"}]}]}]},
        ]
    }
}
BUCKET_PREFIXES = ("uploads/*", "results/*", "outputs/*")
SSM_PARAMETER = re.compile(
    r"^arn:\$\{AWS::Partition\}:ssm:\$\{AWS::Region\}:\$\{AWS::AccountId\}:parameter\$\{(\w+)\}$"
)


@pytest.fixture(scope="module")
def sam() -> SamTemplate:
    return SamTemplate.load(PROJECT_ROOT / "template.yaml")


@pytest.fixture(scope="module")
def cfn(sam: SamTemplate) -> Json:
    return sam.translate("artifacts", "us-east-1")


def _of_type(cfn: Json, resource_type: str) -> dict[str, Json]:
    return {k: v for k, v in cfn["Resources"].items() if v["Type"] == resource_type}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statements(role: Json) -> list[Json]:
    found = []
    for policy in role["Properties"].get("Policies") or []:
        found += _as_list(policy["PolicyDocument"]["Statement"])
    return found


def _role_of(cfn: Json, function: Json) -> str:
    role = function["Properties"]["Role"]
    assert isinstance(role, dict) and "Fn::GetAtt" in role, f"role not from this template: {role}"
    target = role["Fn::GetAtt"]
    return str(target[0] if isinstance(target, list) else target.split(".")[0])


def _roles_by_function(cfn: Json) -> dict[str, Json]:
    return {k: cfn["Resources"][_role_of(cfn, f)] for k, f in _of_type(cfn, "AWS::Lambda::Function").items()}


def _resources(value: Any) -> list[Any]:
    """The resources a statement may name: both sides of a `!If [Condition, X, !Ref AWS::NoValue]`
    (a grant that exists only where a parameter is set, e.g. Replicate's token) count as granted."""
    found = []
    for resource in _as_list(value):
        if isinstance(resource, dict) and "Fn::If" in resource:
            found += [
                r for side in resource["Fn::If"][1:] for r in _resources(side) if r != {"Ref": "AWS::NoValue"}
            ]
        else:
            found.append(resource)
    return found


def _grants(role: Json) -> list[tuple[str, Any]]:
    """(action, resource) for every Allow in the role."""
    return [
        (action, resource)
        for st in _statements(role)
        if st["Effect"] == "Allow"
        for action in _as_list(st["Action"])
        for resource in _resources(st["Resource"])
    ]


def _owned_resource_problem(cfn: Json, sam: SamTemplate, resource: Any) -> str | None:
    """Why `resource` is not one of the stack's own (bucket prefix, queue, table, index, topic, log
    group, parameter), or None if it is."""
    resources = cfn["Resources"]
    owned_types = {"AWS::SQS::Queue", "AWS::DynamoDB::Table", "AWS::Logs::LogGroup", "AWS::SNS::Topic"}
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        target, attribute = resource["Fn::GetAtt"]
        if resources.get(target, {}).get("Type") in owned_types and attribute == "Arn":
            return None
    if isinstance(resource, dict) and resources.get(resource.get("Ref"), {}).get("Type") == "AWS::SNS::Topic":
        return None
    if isinstance(resource, dict) and isinstance(resource.get("Fn::Sub"), list):
        text, variables = resource["Fn::Sub"]
        in_bucket = any(
            text == f"arn:${{AWS::Partition}}:s3:::{BUCKET}/{prefix}" for prefix in BUCKET_PREFIXES
        )
        if in_bucket and variables == DEPLOYMENT:
            return None
        if text == f"arn:${{AWS::Partition}}:s3:::{BUCKET}" and variables == DEPLOYMENT:
            return None  # the bucket itself: held to listing one prefix below
    if isinstance(resource, dict) and isinstance(resource.get("Fn::Sub"), str):
        text = resource["Fn::Sub"]
        index = re.fullmatch(r"\$\{(\w+)\.Arn\}/index/(\w+)", text)
        if index and resources.get(index.group(1), {}).get("Type") == "AWS::DynamoDB::Table":
            indexes = resources[index.group(1)]["Properties"].get("GlobalSecondaryIndexes") or []
            if index.group(2) in {i["IndexName"] for i in indexes}:
                return None
        parameter = SSM_PARAMETER.fullmatch(text)
        if parameter and sam.declares_parameter(parameter.group(1)):
            return None
    return f"{resource!r} is not a resource of this stack"


def test_every_function_has_its_own_role_written_in_the_template(cfn: Json) -> None:
    functions = _of_type(cfn, "AWS::Lambda::Function")
    roles = [_role_of(cfn, f) for f in functions.values()]
    assert len(set(roles)) == len(functions), "two functions share a role"
    for role in roles:
        assert cfn["Resources"][role]["Type"] == "AWS::IAM::Role"


def test_no_managed_policies_and_only_lambda_may_assume(cfn: Json) -> None:
    # SAM's generated roles carry AWSLambdaBasicExecutionRole (logs:* on every log group) and, for an
    # SQS event, AWSLambdaSQSQueueExecutionRole (receive/delete on every queue). Neither can be
    # turned off while SAM generates the role, so every role is written out instead.
    for name, role in _of_type(cfn, "AWS::IAM::Role").items():
        assert not role["Properties"].get("ManagedPolicyArns"), f"{name} attaches managed policies"
        (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert trust == {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    assert not _of_type(cfn, "AWS::IAM::Policy") and not _of_type(cfn, "AWS::IAM::ManagedPolicy")


def test_no_wildcard_actions_and_no_star_resources_beyond_the_named_exceptions(cfn: Json) -> None:
    for name, role in _of_type(cfn, "AWS::IAM::Role").items():
        for statement in _statements(role):
            assert statement["Effect"] == "Allow"
            assert "NotAction" not in statement and "NotResource" not in statement
            for action in _as_list(statement["Action"]):
                assert "*" not in action, f"{name}: wildcard action {action}"
            if "*" in _as_list(statement["Resource"]):
                assert set(_as_list(statement["Action"])) <= set(STAR_RESOURCE_ACTIONS), (
                    f"{name}: {statement['Action']} on '*'"
                )


def test_every_resource_is_one_of_the_stacks_own(cfn: Json, sam: SamTemplate) -> None:
    for name, role in _of_type(cfn, "AWS::IAM::Role").items():
        for action, resource in _grants(role):
            if resource == "*":
                continue  # held to STAR_RESOURCE_ACTIONS above
            problem = _owned_resource_problem(cfn, sam, resource)
            assert problem is None, f"{name} {action}: {problem}"


def test_the_bucket_itself_is_granted_only_for_listing_one_prefix(cfn: Json) -> None:
    bucket = {"Fn::Sub": [f"arn:${{AWS::Partition}}:s3:::{BUCKET}", DEPLOYMENT]}
    for name, role in _of_type(cfn, "AWS::IAM::Role").items():
        for statement in _statements(role):
            if bucket not in _as_list(statement["Resource"]):
                continue
            assert _as_list(statement["Action"]) == ["s3:ListBucket"], (
                f"{name}: {statement['Action']} on the bucket"
            )
            prefixes = statement.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
            assert prefixes and all(p in BUCKET_PREFIXES for p in _as_list(prefixes)), (
                f"{name} may list the whole bucket"
            )


def test_the_bucket_the_roles_name_is_the_stacks_bucket(cfn: Json) -> None:
    (bucket,) = _of_type(cfn, "AWS::S3::Bucket").values()
    assert bucket["Properties"]["BucketName"] == {"Fn::Sub": [BUCKET, DEPLOYMENT]}


def test_event_sources_and_destinations_are_granted_on_their_own_queue_only(cfn: Json) -> None:
    roles = _roles_by_function(cfn)
    for mapping in _of_type(cfn, "AWS::Lambda::EventSourceMapping").values():
        function = mapping["Properties"]["FunctionName"]["Ref"]
        queue = mapping["Properties"]["EventSourceArn"]
        granted = {a for a, r in _grants(roles[function]) if r == queue}
        assert granted >= SQS_POLLING, f"{function} cannot poll its queue"
        for action in SQS_POLLING:
            assert all(r == queue for a, r in _grants(roles[function]) if a == action), (
                f"{function} may {action} another queue"
            )
    for config in _of_type(cfn, "AWS::Lambda::EventInvokeConfig").values():
        function = config["Properties"]["FunctionName"]["Ref"]
        destination = config["Properties"]["DestinationConfig"]["OnFailure"]["Destination"]
        assert ("sqs:SendMessage", destination) in _grants(roles[function])


def test_each_function_logs_to_its_own_group_and_may_write_only_there(cfn: Json) -> None:
    for name, function in _of_type(cfn, "AWS::Lambda::Function").items():
        group = function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        assert cfn["Resources"][group]["Type"] == "AWS::Logs::LogGroup"
        logs = {(a, str(r)) for a, r in _grants(_roles_by_function(cfn)[name]) if a.startswith("logs:")}
        arn = str({"Fn::GetAtt": [group, "Arn"]})
        assert logs == {("logs:CreateLogStream", arn), ("logs:PutLogEvents", arn)}


def test_sqs_send_and_ssm_reads_match_what_each_function_is_given(cfn: Json, sam: SamTemplate) -> None:
    """A function may send to a queue or read a parameter only if its environment names it:
    grants the code has no address for are grants nobody uses."""
    roles = _roles_by_function(cfn)
    for name, function in _of_type(cfn, "AWS::Lambda::Function").items():
        env = str(function["Properties"].get("Environment", {}).get("Variables", {}))
        invoke = [
            c
            for c in _of_type(cfn, "AWS::Lambda::EventInvokeConfig").values()
            if c["Properties"]["FunctionName"]["Ref"] == name
        ]
        destinations = [str(c["Properties"]["DestinationConfig"]["OnFailure"]["Destination"]) for c in invoke]
        for action, resource in _grants(roles[name]):
            if action == "sqs:SendMessage":
                queue = resource["Fn::GetAtt"][0]
                assert f"'Ref': '{queue}'" in env or str(resource) in destinations, (
                    f"{name} may send to {queue} but is not given it"
                )
            if action == "ssm:GetParameter":
                parameter = SSM_PARAMETER.fullmatch(resource["Fn::Sub"])
                assert parameter is not None
                assert f"'Ref': '{parameter.group(1)}'" in env, f"{name} may read {parameter.group(1)}"
