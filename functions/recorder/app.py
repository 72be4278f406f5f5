"""Finished-run queue -> each run's outcome recorded once (a completed run's outputs fetched first).

The whole received batch is handled together, not record by record: its fetches run at once
and each chunk's outcomes are counted in one write, which a per-record processor cannot express.
A record that fails is reported alone (ReportBatchItemFailures), as Powertools' processors do.
"""

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes import SQSEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from rowcall.compose import outcome_recorder
from rowcall.models import FinishedRun
from rowcall.tracing import TRACED_MODULES

logger = Logger()
tracer = Tracer(patch_modules=TRACED_MODULES)
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=SQSEvent)
def lambda_handler(event: SQSEvent, context: LambdaContext) -> PartialItemFailureResponse:
    failed: list[str] = []
    messages: list[tuple[str, FinishedRun]] = []
    for record in event.records:
        try:
            messages.append((record.message_id, FinishedRun.model_validate_json(record.body)))
        except ValidationError:
            logger.exception("not a finished-run message", extra={"message_id": record.message_id})
            failed.append(record.message_id)
    report = outcome_recorder().record(messages)
    failed.extend(sorted(report.failed))
    metrics.add_metric(name="OutcomesRecorded", unit=MetricUnit.Count, value=report.recorded)
    metrics.add_metric(name="OutputsFetched", unit=MetricUnit.Count, value=report.fetched)
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}
