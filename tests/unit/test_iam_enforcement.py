"""--enforce-iam: a role's grants are honoured on their own resources and nowhere else (moto server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from rowcall_local.aws_clients import AwsEndpoint
from rowcall_local.moto_process import MotoProcess

TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
}


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AwsEndpoint]:
    moto = MotoProcess(tmp_path_factory.mktemp("moto") / "moto.log", enforce_iam=True)
    try:
        yield AwsEndpoint(moto.start())
    finally:
        moto.stop()


def admin(aws: AwsEndpoint, service: str) -> Any:
    return aws._client(service)


@pytest.fixture(scope="module")
def world(aws: AwsEndpoint) -> dict[str, Any]:
    """Two of everything, made with the runtime's (administrator's) key; a role granted the first."""
    ddb, sqs, sns, ssm, iam = (admin(aws, s) for s in ("dynamodb", "sqs", "sns", "ssm", "iam"))
    made: dict[str, Any] = {}
    for n in ("own", "other"):
        table = ddb.create_table(
            TableName=f"{n}-table",
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "g", "AttributeType": "S"},
            ],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "gsi1",
                    "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
        )["TableDescription"]
        made[f"{n}_table"] = table["TableArn"]
        url = sqs.create_queue(QueueName=f"{n}-queue")["QueueUrl"]
        made[f"{n}_queue"] = url
        made[f"{n}_queue_arn"] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        made[f"{n}_topic"] = sns.create_topic(Name=f"{n}-topic")["TopicArn"]
        ssm.put_parameter(Name=f"/rowcall/{n}", Value="s3cr3t", Type="SecureString")
    grants = [
        (["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:GetItem"], made["own_table"]),
        (["dynamodb:Query"], made["own_table"] + "/index/gsi1"),
        (["sqs:SendMessage", "sqs:GetQueueUrl"], made["own_queue_arn"]),
        (["sns:Publish"], made["own_topic"]),
        (["ssm:GetParameter"], "arn:aws:ssm:us-east-1:123456789012:parameter/rowcall/own"),
        (["s3:PutObject"], "arn:aws:s3:::own-presign-bucket/uploads/*"),
        (["s3:GetObject", "s3:GetObjectVersion"], "arn:aws:s3:::own-presign-bucket/uploads/*"),
        (["s3:GetObject"], "arn:aws:s3:::listable-bucket/*"),
        (["s3:ListBucket"], "arn:aws:s3:::listable-bucket"),
    ]
    role = iam.create_role(RoleName="fn-role", AssumeRolePolicyDocument=json.dumps(TRUST))["Role"]
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": a, "Resource": r} for a, r in grants],
    }
    iam.put_role_policy(RoleName="fn-role", PolicyName="p", PolicyDocument=json.dumps(policy))
    creds = admin(aws, "sts").assume_role(RoleArn=role["Arn"], RoleSessionName="fn-Test")["Credentials"]
    made["session"] = boto3.session.Session(
        creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"], region_name=aws.region
    )
    return made


def as_role(aws: AwsEndpoint, world: dict[str, Any], service: str) -> Any:
    return world["session"].client(service, endpoint_url=aws.url)


def denied(call: Any) -> bool:
    try:
        call()
    except ClientError as e:
        return e.response["Error"]["Code"] in ("AccessDenied", "AccessDeniedException")
    return False


def test_dynamodb_is_scoped_to_the_table_and_its_index(aws: AwsEndpoint, world: dict[str, Any]) -> None:
    ddb = as_role(aws, world, "dynamodb")
    ddb.put_item(TableName="own-table", Item={"pk": {"S": "a"}, "g": {"S": "x"}})
    ddb.query(
        TableName="own-table",
        IndexName="gsi1",
        KeyConditionExpression="g = :g",
        ExpressionAttributeValues={":g": {"S": "x"}},
    )
    assert denied(lambda: ddb.put_item(TableName="other-table", Item={"pk": {"S": "a"}}))
    # Query on the table itself is not granted, only on its index.
    assert denied(
        lambda: ddb.query(
            TableName="own-table",
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": "a"}},
        )
    )


def test_a_transaction_is_authorized_as_its_items_actions(aws: AwsEndpoint, world: dict[str, Any]) -> None:
    ddb = as_role(aws, world, "dynamodb")
    update = {
        "TableName": "own-table",
        "Key": {"pk": {"S": "a"}},
        "UpdateExpression": "SET n = :n",
        "ExpressionAttributeValues": {":n": {"N": "1"}},
    }
    ddb.transact_write_items(TransactItems=[{"Update": update}])
    check = {
        "TableName": "own-table",
        "Key": {"pk": {"S": "b"}},
        "ConditionExpression": "attribute_not_exists(pk)",
    }
    assert denied(
        lambda: ddb.transact_write_items(TransactItems=[{"Update": update}, {"ConditionCheck": check}])
    )
    other = {**update, "TableName": "other-table"}
    assert denied(lambda: ddb.transact_write_items(TransactItems=[{"Update": other}]))


def test_sqs_batches_need_the_single_action_on_that_queue(aws: AwsEndpoint, world: dict[str, Any]) -> None:
    sqs = as_role(aws, world, "sqs")
    assert sqs.get_queue_url(QueueName="own-queue")["QueueUrl"] == world["own_queue"]
    sqs.send_message_batch(QueueUrl=world["own_queue"], Entries=[{"Id": "1", "MessageBody": "x"}])
    assert denied(lambda: sqs.send_message(QueueUrl=world["other_queue"], MessageBody="x"))
    assert denied(lambda: sqs.get_queue_url(QueueName="other-queue"))
    assert denied(lambda: sqs.receive_message(QueueUrl=world["own_queue"]))


def test_sns_and_ssm_are_scoped_to_the_topic_and_parameter(aws: AwsEndpoint, world: dict[str, Any]) -> None:
    sns, ssm = as_role(aws, world, "sns"), as_role(aws, world, "ssm")
    sns.publish(TopicArn=world["own_topic"], Message="done")
    assert denied(lambda: sns.publish(TopicArn=world["other_topic"], Message="done"))
    assert ssm.get_parameter(Name="/rowcall/own", WithDecryption=True)["Parameter"]["Value"] == "s3cr3t"
    assert denied(lambda: ssm.get_parameter(Name="/rowcall/other", WithDecryption=True))


def test_a_presigned_put_is_authorized_as_the_role_that_signed_it(
    aws: AwsEndpoint, world: dict[str, Any]
) -> None:
    """S3 authorizes a presigned request as its signer: POST /uploads needs PutObject on uploads/*."""
    admin(aws, "s3").create_bucket(Bucket="own-presign-bucket")
    s3 = world["session"].client("s3", endpoint_url=aws.url, config=Config(signature_version="s3v4"))

    def put(key: str) -> httpx.Response:
        params = {"Bucket": "own-presign-bucket", "Key": key, "ContentType": "text/csv"}
        url = s3.generate_presigned_url("put_object", Params=params, ExpiresIn=60)
        return httpx.put(url, content=b"a\n1\n", headers={"Content-Type": "text/csv"}, timeout=10)

    assert put("uploads/a.csv").status_code == 200
    refused = put("results/a.csv")
    assert (refused.status_code, "<Code>AccessDenied</Code>" in refused.text) == (403, True)
    listed = admin(aws, "s3").list_objects_v2(Bucket="own-presign-bucket")["Contents"]
    assert [o["Key"] for o in listed] == ["uploads/a.csv"]


def test_a_missing_object_is_403_to_a_role_that_may_not_list_the_bucket(
    aws: AwsEndpoint, world: dict[str, Any]
) -> None:
    """S3 tells a missing key from a forbidden one only to a caller with s3:ListBucket on the
    bucket; to any other a missing object is 403 AccessDenied (GetObject and HeadObject)."""
    s3_admin = admin(aws, "s3")
    for bucket in ("own-presign-bucket", "listable-bucket"):
        s3_admin.create_bucket(Bucket=bucket)
        s3_admin.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    put = s3_admin.put_object(Bucket="own-presign-bucket", Key="uploads/there.csv", Body=b"a\n")
    s3 = as_role(aws, world, "s3")

    def status(call: Any) -> tuple[int, str]:
        try:
            call()
        except ClientError as e:
            return e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]
        return 200, ""

    own = "own-presign-bucket"
    assert status(lambda: s3.get_object(Bucket=own, Key="uploads/there.csv"))[0] == 200
    version = put["VersionId"]
    assert status(lambda: s3.head_object(Bucket=own, Key="uploads/there.csv", VersionId=version))[0] == 200
    assert status(lambda: s3.get_object(Bucket=own, Key="uploads/gone.csv")) == (403, "AccessDenied")
    assert status(lambda: s3.head_object(Bucket=own, Key="uploads/gone.csv")) == (403, "403")
    s3_admin.delete_object(Bucket=own, Key="uploads/there.csv", VersionId=version)
    assert status(lambda: s3.head_object(Bucket=own, Key="uploads/there.csv", VersionId=version))[0] == 403
    # With s3:ListBucket on the bucket, and to the account's administrator, it stays 404.
    assert status(lambda: s3.get_object(Bucket="listable-bucket", Key="gone.csv")) == (404, "NoSuchKey")
    assert status(lambda: s3.head_object(Bucket="listable-bucket", Key="gone.csv")) == (404, "404")
    assert status(lambda: s3_admin.get_object(Bucket=own, Key="uploads/gone.csv")) == (404, "NoSuchKey")


def test_the_runtimes_own_key_is_not_checked_and_decisions_are_counted(
    aws: AwsEndpoint, world: dict[str, Any]
) -> None:
    admin(aws, "sqs").send_message(QueueUrl=world["other_queue"], MessageBody="x")
    decisions = httpx.get(aws.url + "/_rowcall/iam", timeout=10).json()
    assert decisions["enforced"]
    assert {"session": "fn-Test", "action": "sns:Publish", "resource": world["other_topic"]} in decisions[
        "denied"
    ]
    assert "dynamodb:UpdateItem" in decisions["allowed"]["fn-Test"]
    assert all(d["session"] == "fn-Test" for d in decisions["denied"])
