"""The job API's contract: requests and responses described once, as pydantic models.

* :mod:`.fields` -- limits and field types (one check and one schema each);
* :mod:`.requests` -- job requests, :func:`validate_submission`, the ``/api/jobs`` query;
* :mod:`.responses` -- what every route answers (:mod:`.dashboard`: the dashboard's data);
* :mod:`.ollama`, :mod:`.openai` (and :mod:`.openai_mapping`), :mod:`.frontdoors` -- the
  front doors' requests (Ollama's API, the OpenAI-compatible API), their answers, paths;
* :mod:`.openapi` -- the OpenAPI document generated from all of them.
"""

from __future__ import annotations

from .fields import (
    DEFAULT_LIST,
    MAX_BATCH,
    MAX_IDEMPOTENCY_KEY,
    MAX_IMAGE_BYTES,
    MAX_IMAGES,
    MAX_INPUTS,
    MAX_JSON_DEPTH,
    MAX_LIST,
    MAX_MESSAGES,
    MAX_METADATA_BYTES,
    MAX_MODEL_NAME,
    MAX_NUM_CTX,
    MAX_TEXT_BYTES,
    keep_alive_seconds,
)
from .requests import (
    FIELDS,
    JobsQuery,
    Submission,
    parse_jobs_query,
    validate_model_name,
    validate_submission,
)

__all__ = [
    "DEFAULT_LIST",
    "FIELDS",
    "MAX_BATCH",
    "MAX_IDEMPOTENCY_KEY",
    "MAX_IMAGES",
    "MAX_IMAGE_BYTES",
    "MAX_INPUTS",
    "MAX_JSON_DEPTH",
    "MAX_LIST",
    "MAX_MESSAGES",
    "MAX_METADATA_BYTES",
    "MAX_MODEL_NAME",
    "MAX_NUM_CTX",
    "MAX_TEXT_BYTES",
    "JobsQuery",
    "Submission",
    "keep_alive_seconds",
    "parse_jobs_query",
    "validate_model_name",
    "validate_submission",
]
