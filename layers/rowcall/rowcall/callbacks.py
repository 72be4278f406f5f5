"""Run callbacks: authenticate, then record the row's outcome exactly once and finish what follows."""

from __future__ import annotations

from dataclasses import dataclass

from aws_lambda_powertools import Logger

from rowcall.finishing import BatchFinisher
from rowcall.identity import CallbackSigner, parse_row_id
from rowcall.ledger import Ledger
from rowcall.models import RowOutcome, RowStatus, RunObject

logger = Logger(child=True)


@dataclass(frozen=True)
class CallbackResult:
    recorded: bool
    status: str


class CallbackRecorder:
    def __init__(self, ledger: Ledger, finisher: BatchFinisher, signer: CallbackSigner) -> None:
        self._ledger = ledger
        self._finisher = finisher
        self._signer = signer

    def authentic(self, batch_id: str, row_id: str, token: str | None) -> bool:
        """Checked before the body is read: a forged callback costs one HMAC and nothing else."""
        return bool(token) and self._signer.verify(batch_id, row_id, token or "")

    def record(self, batch_id: str, row_id: str, run: RunObject) -> CallbackResult:
        parsed = parse_row_id(row_id)
        if parsed is None:
            return CallbackResult(False, "unknown_row")
        chunk, record = parsed
        terminal = run.terminal_status
        if terminal is None:
            return CallbackResult(False, "not_terminal")
        outcome = RowOutcome(
            status=RowStatus(terminal),
            run_id=run.run_id,
            outputs=[o.model_dump(exclude_none=True) for o in run.outputs],
            error_code=run.error_code or (None if terminal is RowStatus.COMPLETED else "run_failed"),
            error_message=run.error_message,
        )
        recorded = self._ledger.row_finished(batch_id, chunk, record, outcome)
        if not recorded:
            logger.info("callback changed nothing", extra={"row_id": row_id, "run_id": run.run_id})
        # Also after a duplicate: it completes whatever a crashed earlier delivery left half done.
        self._finisher.after_row_finished(batch_id, chunk)
        return CallbackResult(recorded, terminal.value)
