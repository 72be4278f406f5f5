"""S3 ObjectCreated under uploads/ -> one batch per object version."""

from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import S3Event, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from rowcall.compose import ingestor
from rowcall.ingest import ObjectCreated
from rowcall.tracing import TRACED_MODULES

logger = Logger()
tracer = Tracer(patch_modules=TRACED_MODULES)
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=S3Event)
def lambda_handler(event: S3Event, context: LambdaContext) -> dict[str, list[str]]:
    batches: list[str] = []
    for record in event.records:
        s3_object = record.s3.get_object
        if s3_object.key.endswith("/"):
            continue  # a console "folder", not a file
        created = ObjectCreated(
            bucket=record.s3.bucket.name,
            key=unquote_plus(s3_object.key),
            version_id=s3_object.version_id,
            sequencer=s3_object.get("sequencer"),
            size=s3_object.get("size"),
        )
        batch = ingestor().ingest(created)
        if batch is not None:
            batches.append(batch.batch_id)
            metrics.add_metric(name="BatchesIngested", unit=MetricUnit.Count, value=1)
    return {"batch_ids": batches}
