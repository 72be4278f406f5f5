"""Save queue -> each completed row's outputs copied into the bucket (contract section 7).

Off the recorder's path: a large download holds up no outcome. A record that fails is reported
alone (ReportBatchItemFailures) and comes back after the queue's visibility timeout; a record
received before (a saver that died half way) first looks for the copies already made.
"""

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes import SQSEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from rowcall.compose import output_saver
from rowcall.saved_outputs import SaveMessage

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=SQSEvent)
def lambda_handler(event: SQSEvent, context: LambdaContext) -> PartialItemFailureResponse:
    failed: list[str] = []
    messages: list[tuple[str, SaveMessage, bool]] = []
    for record in event.records:
        try:
            message = SaveMessage.model_validate_json(record.body)
        except ValidationError:
            logger.exception("not a save message", extra={"message_id": record.message_id})
            failed.append(record.message_id)
            continue
        redelivered = int(record.attributes.approximate_receive_count or "1") > 1
        messages.append((record.message_id, message, redelivered))
    report = output_saver().save(messages)
    failed.extend(sorted(report.failed))
    metrics.add_metric(name="OutputsSaved", unit=MetricUnit.Count, value=report.saved)
    metrics.add_metric(name="OutputsGivenUp", unit=MetricUnit.Count, value=report.given_up)
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}
