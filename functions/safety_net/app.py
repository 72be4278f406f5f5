"""Scheduled -> one sweep of the work that is waiting: silent runs, stalled chunks, stuck on-dones."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from rowcall.compose import safety_net
from rowcall.tracing import TRACED_MODULES

logger = Logger()
tracer = Tracer(patch_modules=TRACED_MODULES)
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = safety_net().sweep()
    # What the sweep had to repair: with no faults this stays 0 (an alarm watches it).
    metrics.add_metric(name="SafetyNetFindings", unit=MetricUnit.Count, value=report.findings)
    metrics.add_metric(name="SafetyNetRunsAsked", unit=MetricUnit.Count, value=report.asked)
    logger.info("sweep done", extra={"report": report.__dict__})
    if report.problems:
        raise RuntimeError(f"{len(report.problems)} parts of the sweep failed: {report.problems[:5]}")
    return {"findings": report.findings, "open_chunks": report.open_chunks}
