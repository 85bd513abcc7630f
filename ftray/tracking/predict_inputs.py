"""What `predict` of a registered version reads: every accepted form of input as the
conversations to answer, each with the tools it brings, or an error that names the forms.

The model has no input schema, so MLflow hands `predict` what the caller passed (a schema
would recast a list of messages as a table of roles and contents). Only `mlflow models serve`
recasts: its `inputs` parser turns lists and values into numpy arrays, which are read back
here as the JSON they were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException

from ftray.tasks.base import Message
from ftray.tasks.chat import normalise_tools
from ftray.tasks.chat_requests import request_messages

FORMS = (
    "a prompt string; a conversation, i.e. a list of chat messages "
    '[{"role": ..., "content": ...}, ...]; a request {"messages": [...], "tools": [...]} '
    '(tools optional, "prompt": "..." instead of messages); a list of prompts, conversations '
    "or requests; or a DataFrame with a `messages` or `prompt` column (and optionally `tools`)"
)
REQUEST_KEYS = ("messages", "prompt", "tools")


@dataclass(frozen=True)
class Request:
    """One conversation to answer."""

    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    """The request's own tools; None: the model's (those it was trained with)."""


def unreadable(what: str) -> MlflowException:
    """The error for an input `predict` cannot read: what is wrong, and the forms it reads
    (a bad request to `mlflow models serve`, answered 400 with this message)."""
    return MlflowException.invalid_parameter_value(f"{what}. predict reads {FORMS}")


def plain(value: Any) -> Any:
    """`value` as JSON-like Python, all the way down: numpy arrays (as MLflow's server and
    pandas hand lists over) become lists, numpy scalars Python ones."""
    import numpy as np
    import pandas as pd

    if isinstance(value, np.ndarray | pd.Series):
        value = value.tolist()
    elif isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def missing(value: Any) -> bool:
    """Whether a table cell is empty (None, or the NaN pandas fills a missing key with)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def read_request(item: Any, where: str) -> Request:
    """One prompt string, conversation or request; MlflowException says what is wrong."""
    if isinstance(item, str):
        return Request([{"role": "user", "content": item}])
    if isinstance(item, list):
        try:
            return Request(request_messages(item))
        except ValueError as exc:
            raise unreadable(f"{where}: {exc}") from None
    if not isinstance(item, dict):
        raise unreadable(f"{where} is {type(item).__name__}")
    if "role" in item:
        raise unreadable(f"{where} is one message; a conversation is a list of messages")
    unknown = sorted(item.keys() - set(REQUEST_KEYS))
    if unknown:
        raise unreadable(f"{where} has {', '.join(map(repr, unknown))}, which is not read")
    if ("messages" in item) == ("prompt" in item):
        raise unreadable(f'{where} needs either "messages" or "prompt"')
    if "prompt" in item and not isinstance(item["prompt"], str):
        raise unreadable(f'{where}: "prompt" must be a string')
    if "messages" in item and not isinstance(item["messages"], list):
        raise unreadable(f'{where}: "messages" must be a list of messages')
    body = read_request(item.get("messages", item.get("prompt")), where)
    tools = item.get("tools")
    if missing(tools):
        return body
    try:
        return Request(body.messages, normalise_tools(tools))
    except ValueError as exc:
        raise unreadable(f"{where}: tools: {exc}") from None


def read_frame(frame: Any) -> list[Request]:
    """One request per row of a DataFrame with a `messages` or `prompt` column (and maybe
    `tools`); a frame of one other column holds prompts or conversations (MLflow makes such
    a frame of a list for a version logged with an input schema)."""
    columns = [str(c) for c in frame.columns]
    if len(columns) == 1 and columns[0] not in REQUEST_KEYS:
        cells = plain(frame.iloc[:, 0])
        return [read_request(cell, f"row {n}") for n, cell in enumerate(cells, start=1)]
    unknown = sorted(set(columns) - set(REQUEST_KEYS))
    if unknown or not {"messages", "prompt"} & set(columns):
        raise unreadable(f"the DataFrame has columns {columns}")
    requests = []
    for number, row in enumerate(frame.to_dict("records"), start=1):
        record = {key: plain(value) for key, value in row.items() if not missing(value)}
        requests.append(read_request(record, f"row {number}"))
    return requests


def read_requests(model_input: Any) -> tuple[list[Request], bool]:
    """(the conversations `model_input` asks to answer, whether it is one request, answered
    by one answer rather than a list); MlflowException names the forms read otherwise."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        return read_frame(model_input), False
    value = plain(model_input)
    if isinstance(value, str | dict):
        return [read_request(value, "the input")], True
    if not isinstance(value, list):
        raise unreadable(f"the input is {type(value).__name__}")
    if value and all(isinstance(item, dict) and "role" in item for item in value):
        return [read_request(value, "the conversation")], False
    return [read_request(item, f"item {n}") for n, item in enumerate(value, start=1)], False
