"""Finished-run queue -> each run's outcome recorded once (a completed run's outputs fetched first)."""

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

from rowcall.compose import outcome_recorder
from rowcall.models import FinishedRun

logger = Logger()
tracer = Tracer()
metrics = Metrics()
# Every record of a received batch is handled at once: the batch size bounds the fetches in flight.
processor = AsyncBatchProcessor(event_type=EventType.SQS)


async def record_outcome(record: SQSRecord) -> None:
    result = await outcome_recorder().record(FinishedRun.model_validate_json(record.body))
    metrics.add_metric(
        name="OutcomesRecorded" if result.recorded else "OutcomesIgnored", unit=MetricUnit.Count, value=1
    )
    if result.fetched:
        metrics.add_metric(name="OutputsFetched", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return async_process_partial_response(
        event=event, record_handler=record_outcome, processor=processor, context=context
    )
