"""AWS list prices the cost model uses: us-east-1, arm64, on-demand, first (smallest-volume) tier, no
free tier (a free tier is per account, not per row).

Each price carries where it was read and when. "Read" is the date this table was written from the
stored copy of the page (the pages themselves are undated or dated as given). Where AWS's own page
renders its rates client-side and the stored text does not show the number, the source is the
third-party page that quotes it, named as such; check those against the AWS page before relying on
them. Nothing here is fetched at run time: a benchmark must not change because a page did.
"""

from __future__ import annotations

from dataclasses import dataclass

READ_ON = "2026-11-25"


@dataclass(frozen=True)
class Price:
    usd: float
    per: float
    """The unit count the price is for: 1e6 for "per million", 1 for "per GB-second"..."""
    unit: str
    source: str
    note: str = ""

    @property
    def each(self) -> float:
        """USD for one unit."""
        return self.usd / self.per


LAMBDA_REQUEST = Price(
    0.20,
    1e6,
    "request (invocation)",
    "https://aws.amazon.com/lambda/pricing/",
    "same for x86 and arm64",
)
LAMBDA_ARM_GB_SECOND = Price(
    0.0000133334,
    1,
    "GB-second, arm64, first 7.5B GB-s/month",
    "https://aws.amazon.com/lambda/pricing/ (rates rendered client-side; number as quoted by "
    "git.mcrn.ar/mariano/lambda_local_runner docs/lambdas-md/lambda-13-cost.md, 2026-05)",
    "billed per 1 ms of handler duration x configured memory",
)
LAMBDA_DURABLE_OPERATION = Price(
    8.00,
    1e6,
    "durable operation (step, wait, callback, execution start)",
    "https://aws.amazon.com/lambda/pricing/ (durable functions example rate, as transcribed on "
    "2026-09-20 in github.com/api-evangelist/aws-lambda plans/aws-lambda-plans-pricing.yml)",
    "data written and data retained by durable executions are also billed; their rates were not "
    "found in the stored text and are left out (a few hundred bytes per row)",
)
DYNAMODB_WRITE_UNIT = Price(
    0.625,
    1e6,
    "on-demand write request unit",
    "https://aws.amazon.com/dynamodb/pricing/on-demand/ (after the November 2024 cut, as quoted by "
    "airbyte.com/data-engineering-resources/dynamodb-pricing, 2025-07-21)",
)
DYNAMODB_READ_UNIT = Price(
    0.125,
    1e6,
    "on-demand read request unit",
    "https://aws.amazon.com/dynamodb/pricing/on-demand/ (as above)",
)
SQS_STANDARD_REQUEST = Price(
    0.40,
    1e6,
    "standard-queue request, per 64 KB of payload",
    "https://aws.amazon.com/sqs/pricing/ (as quoted by cloudburn.io/blog/amazon-sqs-pricing, 2026-03-14)",
)
SQS_FIFO_REQUEST = Price(
    0.50,
    1e6,
    "FIFO-queue request, per 64 KB of payload",
    "https://aws.amazon.com/sqs/pricing/ (as above)",
)
S3_WRITE_REQUEST = Price(
    0.005,
    1e3,
    "S3 Standard PUT, COPY, POST or LIST request",
    "https://aws.amazon.com/s3/pricing/ (as quoted by cloudkaramchari.com, per 1,000 requests)",
)
S3_READ_REQUEST = Price(
    0.0004,
    1e3,
    "S3 Standard GET, HEAD and all other requests",
    "https://aws.amazon.com/s3/pricing/",
)
SNS_PUBLISH = Price(
    0.50,
    1e6,
    "SNS standard-topic publish, per 64 KB",
    "https://aws.amazon.com/sns/pricing/ (as quoted by factualminds.com, amazon-sns-pricing)",
    "deliveries to the subscribers a user adds are theirs and not counted",
)
API_GATEWAY_HTTP_REQUEST = Price(
    1.00,
    1e6,
    "HTTP API request, per 512 KB, first 300M/month",
    "https://aws.amazon.com/api-gateway/pricing/ (as quoted by apigatewaycost.com/aws)",
)
STEP_FUNCTIONS_STANDARD_TRANSITION = Price(
    0.025,
    1e3,
    "Standard workflow state transition",
    "https://aws.amazon.com/step-functions/pricing/ (stored page: US East (N. Virginia) $0.0250 per 1,000)",
)

ALL = {
    "lambda_request": LAMBDA_REQUEST,
    "lambda_arm_gb_second": LAMBDA_ARM_GB_SECOND,
    "lambda_durable_operation": LAMBDA_DURABLE_OPERATION,
    "dynamodb_write_unit": DYNAMODB_WRITE_UNIT,
    "dynamodb_read_unit": DYNAMODB_READ_UNIT,
    "sqs_standard_request": SQS_STANDARD_REQUEST,
    "sqs_fifo_request": SQS_FIFO_REQUEST,
    "s3_write_request": S3_WRITE_REQUEST,
    "s3_read_request": S3_READ_REQUEST,
    "sns_publish": SNS_PUBLISH,
    "api_gateway_http_request": API_GATEWAY_HTTP_REQUEST,
    "step_functions_standard_transition": STEP_FUNCTIONS_STANDARD_TRANSITION,
}
