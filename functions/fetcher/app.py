"""Fetch queue -> each finished run's outputs, fetched once and recorded; runs of a batch in parallel."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    AsyncBatchProcessor,
    EventType,
    async_process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from rowcall.compose import output_fetcher
from rowcall.models import FetchMessage

logger = Logger()
tracer = Tracer()
metrics = Metrics()
# Every record of a received batch is fetched at once: the batch size bounds the concurrency.
processor = AsyncBatchProcessor(event_type=EventType.SQS)


async def fetch(record: SQSRecord) -> None:
    result = await output_fetcher().fetch(FetchMessage.model_validate_json(record.body))
    metrics.add_metric(
        name="OutputsRecorded" if result.recorded else "OutputsIgnored", unit=MetricUnit.Count, value=1
    )


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return async_process_partial_response(
        event=event, record_handler=fetch, processor=processor, context=context
    )
