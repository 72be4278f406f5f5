"""Done messages -> results CSV, SNS, signed on-done webhook (retried by re-enqueueing)."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from rowcall.compose import on_done_delivery
from rowcall.models import DoneMessage
from rowcall.tracing import TRACED_MODULES

logger = Logger()
tracer = Tracer(patch_modules=TRACED_MODULES)
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)


@tracer.capture_method
def deliver(record: SQSRecord) -> None:
    result = on_done_delivery().deliver(DoneMessage.model_validate_json(record.body))
    logger.info("on-done step", extra={"result": result.status, "attempts": result.attempts})
    if result.status == "delivered":
        metrics.add_metric(name="OnDoneDelivered", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=deliver, processor=processor, context=context)
