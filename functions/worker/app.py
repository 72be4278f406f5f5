"""SQS chunk messages -> one provider run per row; a chunk that fails alone is retried alone."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from rowcall.compose import redelivery_schedule, run_starter
from rowcall.models import ChunkMessage
from rowcall.runs import ChunkIncomplete
from rowcall.tracing import TRACED_MODULES

logger = Logger()
tracer = Tracer(patch_modules=TRACED_MODULES)
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)
_context: LambdaContext | None = None


def _seconds_left() -> float:
    return _context.get_remaining_time_in_millis() / 1000 if _context else 900.0


@tracer.capture_method
def start_chunk(record: SQSRecord) -> None:
    message = ChunkMessage.model_validate_json(record.body)
    try:
        report = run_starter().start_chunk(message, _seconds_left)
    except ChunkIncomplete:
        receive_count = int(record.attributes.approximate_receive_count)
        delay = redelivery_schedule().retry_later(
            record.event_source_arn, record.receipt_handle, receive_count
        )
        logger.warning("chunk deferred", extra={"chunk": message.chunk.index, "retry_in_s": delay})
        raise
    metrics.add_metric(name="RunsStarted", unit=MetricUnit.Count, value=report.started)
    metrics.add_metric(name="RowsRefused", unit=MetricUnit.Count, value=report.refused)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    global _context
    _context = context
    return process_partial_response(
        event=event, record_handler=start_chunk, processor=processor, context=context
    )
