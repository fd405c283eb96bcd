"""OpenAI-compatible request bodies, validated with pydantic (each error names its field), and the
error a refused request gets (``ApiError``, ``error_body``)."""
from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from nety_jax.data.prompts import unencodable
from nety_jax.serving.settings import MAX_SEED

MAX_PROMPT_CHARS = 100_000

# OpenAI fields this server does not implement. Clients send them at their "off" values, which are
# accepted; any other value is refused rather than ignored, since the reply would lack what it asks
# (completions' logprobs=0 too: it asks for the chosen tokens' log-probabilities).
# Types are strict, as OpenAI's API is: "seed": "3", "max_tokens": 5.0, "stream": "yes", "n": true are
# 400s naming the field, never coerced (pydantic's lax mode read "stream": "yes" as true and "temperature":
# true as 1.0, so a client's mistake got a reply it did not ask for). An integer is a valid float.
# A field the server does not know is refused too (OpenAI answers "Unrecognized request argument"):
# vLLM's sampling extensions (min_tokens, repetition_penalty, ignore_eos, stop_token_ids) or a typo
# (max_new_tokens) would otherwise get a reply that ignored them. Fields that do not change a reply
# (HARMLESS) are accepted.
STRICT = ConfigDict(extra="ignore", strict=True)
REQUEST = ConfigDict(extra="forbid", strict=True)
HARMLESS = ("user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key",
            "safety_identifier")

OFF_VALUES = {"logprobs": (False,), "top_logprobs": (0,), "echo": (False,), "suffix": ("",),
              "best_of": (1,), "logit_bias": ({},), "presence_penalty": (0,), "frequency_penalty": (0,),
              "tools": ([],), "tool_choice": ("none", "auto"), "functions": ([],),
              "function_call": ("none", "auto"), "response_format": ({"type": "text"},)}


class ApiError(Exception):
    """A request refused with an HTTP status and an OpenAI-style error body (``error_body``)."""

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_body(message: str, param: Optional[str] = None, kind: str = "invalid_request_error") -> dict:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


class StreamOptions(BaseModel):
    model_config = STRICT

    include_usage: bool = False  # one more chunk before [DONE]: the whole request's usage


_Unimplemented = create_model("_Unimplemented", **{name: (Any, None) for name in (*OFF_VALUES, *HARMLESS)})


class _Sampling(_Unimplemented):
    model_config = REQUEST

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0.0, le=100.0, allow_inf_nan=False)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: Optional[int] = Field(None, ge=0, le=1_000_000)  # an extension of OpenAI's API
    n: int = Field(1, ge=1, le=64)
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED)
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None

    @field_validator(*OFF_VALUES)
    @classmethod
    def _off_only(cls, value, info):
        off = OFF_VALUES[info.field_name]
        if value is not None and not any(isinstance(value, bool) == isinstance(v, bool) and value == v for v in off):
            raise ValueError("not supported by this server; leave it out or send " +
                             " or ".join(json.dumps(v) for v in off))
        return value

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, value, info):
        if value is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed when stream is true")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        for stop in stops:
            if unencodable(stop):
                raise ValueError(f"a stop sequence {unencodable(stop)}")
        return stops


def _text(value: str, name: str) -> str:
    if not value.strip():
        raise ValueError(f"{name} is empty")
    if len(value) > MAX_PROMPT_CHARS:
        raise ValueError(f"{name} is longer than {MAX_PROMPT_CHARS:,} characters")
    if unencodable(value):
        raise ValueError(f"{name} {unencodable(value)}")
    return value


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value):
        prompts = [value] if isinstance(value, str) else value
        if not prompts:
            raise ValueError("prompt is empty")
        if len(prompts) > 64:
            raise ValueError("at most 64 prompts")
        return [_text(p, "prompt") for p in prompts]


class Message(BaseModel):
    model_config = STRICT

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, value):
        """OpenAI's content parts ([{"type": "text", "text": ...}, ...]) joined by newlines, as
        vLLM does; no content (an assistant's tool call) is empty text."""
        if value is None:
            return ""
        if not isinstance(value, list):
            return value
        texts = []
        for k, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"part {k} is {kind!r}: this model reads only text parts "
                                 '({"type": "text", "text": "..."})')
            texts.append(part["text"])
        return "\n".join(texts)

    @field_validator("content")
    @classmethod
    def _encodable(cls, value):
        if unencodable(value):
            raise ValueError(f"content {unencodable(value)}")
        return value


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)  # OpenAI's newer name; wins over max_tokens

    @field_validator("messages")
    @classmethod
    def _messages(cls, value):
        if not any(m.role == "user" and m.content.strip() for m in value):
            raise ValueError("needs a user message with text")
        for m in value:
            if len(m.content) > MAX_PROMPT_CHARS:
                raise ValueError(f"a message is longer than {MAX_PROMPT_CHARS:,} characters")
        return value

    def prompt(self, task) -> str:
        """The one prompt text the conversation becomes (``task.chat_prompt``: the last user
        message, or the whole conversation continued)."""
        return task.chat_prompt([(m.role, m.content) for m in self.messages])
