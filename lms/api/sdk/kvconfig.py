"""The SDK's KV config stacks (docs/API.md, SDK endpoints): load settings and prediction settings.

A stack is ``{"layers": [{"layerName", "config": {"fields": [{"key", "value"}]}}]}``; it is
collapsed as LM Studio does (layers in order, a later field wins). Checkbox values are
``{"checked": bool, "value": X}``. Keys lms does not act on (GPU split, rope, the speculative
decoding thresholds...) are ignored, as LM Studio ignores keys it does not know.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lms import limits
from lms.errors import InvalidParameterError, NotImplementedYetError
from lms.inference.grammar_limits import gbnf_grammar
from lms.inference.sampling import SamplingParams
from lms.inference.structured import schema_grammar

#: The prompt template the SDK's ``complete()`` sends: the messages' contents, nothing else.
COMPLETION_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
COMPLETION_LAYER = "completeModeFormatting"
_PREFIX = "llm.prediction."
_DRAFT_MODEL = _PREFIX + "speculativeDecoding.draftModel"
_DRAFT_TOKENS = _PREFIX + "speculativeDecoding.numDraftTokensExact"
#: The most guessed tokens a step may be asked for (``numDraftTokensExact``).
MAX_DRAFT_TOKENS = 16


def collapse(stack: Any, param: str) -> tuple[dict[str, Any], set[str]]:
    """The fields of a stack (later layers win) and the names of its layers."""
    if stack is None:
        return {}, set()
    layers = stack.get("layers") if isinstance(stack, dict) else None
    if not isinstance(layers, list):
        raise InvalidParameterError(
            f"'{param}' must be an object with a 'layers' list", param=param
        )
    fields: dict[str, Any] = {}
    names: set[str] = set()
    for index, layer in enumerate(layers):
        config = layer.get("config") if isinstance(layer, dict) else None
        entries = config.get("fields") if isinstance(config, dict) else None
        if not isinstance(entries, list):
            raise InvalidParameterError(
                f"'{param}.layers[{index}]' must have config.fields", param=param
            )
        if isinstance(layer.get("layerName"), str):
            names.add(layer["layerName"])
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                fields[entry["key"]] = entry.get("value")
    return fields, names


def load_settings(stack: Any, kind: str) -> int | None:
    """The context length a ``loadConfigStack`` asks for (None: the default)."""
    fields, _ = collapse(stack, "loadConfigStack")
    value = fields.get(f"{kind}.load.contextLength")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 16:
        raise InvalidParameterError(
            f"'{kind}.load.contextLength' must be an integer of at least 16", param="contextLength"
        )
    return value


def ttl_seconds(milliseconds: Any, param: str) -> int | None:
    """An SDK TTL in milliseconds as whole seconds (None: absent); NaN, the infinities, zero,
    negatives and more than 30 days are refused naming ``param`` (:mod:`lms.limits`)."""
    if milliseconds is None:
        return None
    return limits.ttl_from_milliseconds(milliseconds, param)


@dataclass
class Prediction:
    """What a ``predictionConfigStack`` asks of one prediction."""

    params: SamplingParams
    #: True for ``complete()``: the prompt is the raw text of the messages, no chat template.
    raw_prompt: bool = False
    #: OpenAI-shaped tool entries (``llm.prediction.tools``).
    tools: list[dict[str, Any]] = field(default_factory=list)
    #: The fields in force, echoed back as ``predictionConfig``.
    echo: list[dict[str, Any]] = field(default_factory=list)


def prediction(stack: Any) -> Prediction:
    """Read a prediction stack; each bad value is an InvalidParameterError naming its key."""
    fields, layers = collapse(stack, "predictionConfigStack")
    defaults = SamplingParams()

    def number(key: str, default: float, low: float, high: float, *, checkbox: bool) -> float:
        value = fields.get(_PREFIX + key)
        if checkbox and isinstance(value, dict):
            value = value.get("value") if value.get("checked") else None
        if value is None or value is False:
            return default
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not low <= value <= high
        ):
            raise InvalidParameterError(
                f"'{_PREFIX}{key}' must be a number between {low} and {high}", param=key
            )
        return float(value)

    max_tokens: int | None = None
    limit = fields.get(_PREFIX + "maxPredictedTokens")
    if isinstance(limit, dict) and limit.get("checked") and limit.get("value") is not False:
        value = limit.get("value")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidParameterError(
                f"'{_PREFIX}maxPredictedTokens' must be a positive integer", param="maxTokens"
            )
        max_tokens = value
    stops = fields.get(_PREFIX + "stopStrings") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise InvalidParameterError(
            f"'{_PREFIX}stopStrings' must be a list of strings", param="stopStrings"
        )
    speculative, draft_tokens, draft_model = _speculation(
        fields.get(_DRAFT_MODEL), fields.get(_DRAFT_TOKENS)
    )
    params = SamplingParams(
        temperature=number("temperature", defaults.temperature, 0.0, 5.0, checkbox=False),
        top_k=int(number("topKSampling", defaults.top_k, 0, 100_000, checkbox=False)),
        top_p=number("topPSampling", defaults.top_p, 0.0, 1.0, checkbox=True),
        min_p=number("minPSampling", defaults.min_p, 0.0, 1.0, checkbox=True),
        repeat_penalty=number("repeatPenalty", defaults.repeat_penalty, 0.0, 10.0, checkbox=True),
        stop=tuple(s for s in stops if s),
        max_tokens=max_tokens,
        grammar=_grammar(fields.get(_PREFIX + "structured")),
        speculative=speculative,
        draft_tokens=draft_tokens,
        draft_model=draft_model,
    )
    raw = _is_raw_prompt(fields.get(_PREFIX + "promptTemplate"), layers)
    return Prediction(
        params=params,
        raw_prompt=raw,
        tools=_tools(fields.get(_PREFIX + "tools")),
        echo=_echo(params),
    )


def _speculation(draft_model: Any, draft_tokens: Any) -> tuple[bool, int | None, str | None]:
    """``speculative``, ``draft_tokens`` and ``draft_model`` from the SDK's speculative decoding
    keys, plain values as the SDK sends them: ``draftModel`` a model key (empty: none) and
    ``numDraftTokensExact`` 0 (speculation off) to :data:`MAX_DRAFT_TOKENS` guesses a step."""
    key: str | None = None
    if draft_model is not None and draft_model != "":
        key = limits.check_identifier(draft_model, _DRAFT_MODEL)
    if draft_tokens is None:
        return True, None, key
    if (
        not isinstance(draft_tokens, int)
        or isinstance(draft_tokens, bool)
        or not 0 <= draft_tokens <= MAX_DRAFT_TOKENS
    ):
        raise InvalidParameterError(
            f"'{_DRAFT_TOKENS}' must be an integer from 0 (no speculative decoding) to"
            f" {MAX_DRAFT_TOKENS}",
            param=_DRAFT_TOKENS,
        )
    if draft_tokens == 0 and key is not None:
        raise InvalidParameterError(
            f"'{_DRAFT_MODEL}' asks for speculative decoding, but '{_DRAFT_TOKENS}' is 0, which"
            " turns it off: send one or the other",
            param=_DRAFT_TOKENS,
        )
    return (False, None, None) if draft_tokens == 0 else (True, draft_tokens, key)


def _grammar(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidParameterError(f"'{_PREFIX}structured' must be an object", param="structured")
    kind = value.get("type")
    if kind in (None, "none"):
        return None
    if kind == "json":
        return schema_grammar(value.get("jsonSchema"), param="structured.jsonSchema")
    if kind == "gbnf" and isinstance(value.get("gbnfGrammar"), str):
        return gbnf_grammar(value["gbnfGrammar"], param="structured.gbnfGrammar")
    raise InvalidParameterError(
        f"'{_PREFIX}structured' must be of type json (with jsonSchema) or gbnf (with gbnfGrammar)",
        param="structured",
    )


def _is_raw_prompt(template: Any, layers: set[str]) -> bool:
    """``complete()`` (its ``completeModeFormatting`` layer, or the same template sent by
    hand) is the only prompt template served: lms never renders a client's Jinja."""
    if template is None:
        return False
    jinja = template.get("jinjaPromptTemplate") if isinstance(template, Mapping) else None
    source = jinja.get("template") if isinstance(jinja, Mapping) else None
    if COMPLETION_LAYER in layers or source == COMPLETION_TEMPLATE:
        return True
    raise NotImplementedYetError(
        "custom prompt templates (llm.prediction.promptTemplate) are not supported: lms uses"
        " the model's own chat template, or the raw text for complete()",
        param="promptTemplate",
    )


def _tools(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, dict) or value.get("type") not in ("toolArray", "none"):
        raise InvalidParameterError(
            f"'{_PREFIX}tools' must be an object of type toolArray", param="tools"
        )
    tools = value.get("tools") or []
    if not isinstance(tools, list):
        raise InvalidParameterError(f"'{_PREFIX}tools.tools' must be a list", param="tools")
    return tools if value.get("type") == "toolArray" else []


def _echo(params: SamplingParams) -> list[dict[str, Any]]:
    limit: dict[str, Any] = (
        {"checked": True, "value": params.max_tokens}
        if params.max_tokens is not None
        else {"checked": False, "value": 0}
    )
    return [
        {"key": _PREFIX + "temperature", "value": params.temperature},
        {"key": _PREFIX + "maxPredictedTokens", "value": limit},
        {"key": _PREFIX + "topKSampling", "value": float(params.top_k)},
        {"key": _PREFIX + "topPSampling", "value": {"checked": True, "value": params.top_p}},
        {"key": _PREFIX + "minPSampling", "value": {"checked": True, "value": params.min_p}},
        {
            "key": _PREFIX + "repeatPenalty",
            "value": {"checked": True, "value": params.repeat_penalty},
        },
        {"key": _PREFIX + "stopStrings", "value": list(params.stop)},
        # Only what was asked for: the SDK's schema has no "off" value for these keys (it
        # refuses a numDraftTokensExact of 0), so speculation turned off echoes neither.
        *([{"key": _DRAFT_MODEL, "value": params.draft_model}] if params.draft_model else []),
        *([{"key": _DRAFT_TOKENS, "value": params.draft_tokens}] if params.draft_tokens else []),
    ]


def _checked(value: float) -> dict[str, Any]:
    return {"checked": True, "value": value}
