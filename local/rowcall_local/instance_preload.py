"""What every function instance imports before its handler, imported once per stack by the fork
server the instances are forked from (child_process.FORK), not once per instance.

Third-party packages only, and only modules that read no environment at import: an instance's
environment is its function's, set after the fork (function_runtime.serve). Not aws_xray_sdk (its
recorder reads the daemon address at import) and not the layer's own `rowcall` package (each
instance imports it from the function's layer directories, as Lambda does).
"""

from __future__ import annotations

import aws_lambda_powertools
import aws_lambda_powertools.event_handler
import aws_lambda_powertools.utilities.batch
import aws_lambda_powertools.utilities.data_classes  # noqa: F401
import boto3
import boto3.dynamodb.types  # noqa: F401
import botocore.client  # noqa: F401
import httpx  # noqa: F401
import pydantic  # noqa: F401
