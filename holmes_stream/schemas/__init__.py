"""Every message and document the service reads or writes."""

from holmes_stream.schemas.alerts import Alert, AlertGroup
from holmes_stream.schemas.investigations import (
    SCHEMA_VERSION,
    TERMINAL_EVENTS,
    FailoverAttempt,
    InvestigationRecord,
    InvestigationRequest,
    InvestigationResult,
    ProgressEvent,
    Status,
    ToolCall,
)

__all__ = [
    "SCHEMA_VERSION",
    "TERMINAL_EVENTS",
    "Alert",
    "AlertGroup",
    "FailoverAttempt",
    "InvestigationRecord",
    "InvestigationRequest",
    "InvestigationResult",
    "ProgressEvent",
    "Status",
    "ToolCall",
]
