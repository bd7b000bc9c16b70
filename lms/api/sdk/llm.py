"""``/llm``: the ``predict`` channel (``respond``, ``complete``, ``act``) and
``applyPromptTemplate``; the endpoints it shares with ``/embedding`` are in :mod:`models`.

``predict`` sends (docs/API.md, SDK endpoints): ``promptProcessingProgress`` while the prompt is
read, one ``fragment`` per streamed piece, tool-call events when tools were offered and the model
called one, then the terminal ``success`` with stats — also after a ``cancel``, with stop reason
``userStopped`` (SDK rule 8). Generation runs on the engine's thread; this coroutine only forwards
what it yields, so the socket keeps reading (cancel, pings, other calls) meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from lms import pipeline
from lms.api import drafts
from lms.api.chat_plan import ChatPlan
from lms.api.sdk import history, kvconfig, models, records, wire
from lms.api.sdk.calls import Call, Channel, Endpoint, channel, rpc
from lms.api.sdk.files import FILES, FileStore
from lms.errors import InvalidParameterError, MissingParameterError, NotFoundError
from lms.inference.engine import GenerationResult, PromptProgress
from lms.inference.manager import Instance
from lms.inference.sampling import SamplingParams
from lms.inference.tool_calls import CallStarted, ContentDelta, ToolCall, ToolCallStream
from lms.remote.models import RemoteModel


def fragment(text: str) -> dict[str, Any]:
    # The engine may join pieces when this consumer lags; each still counts as one here.
    # ``containsDrafted`` stays false: the engine does not say which pieces came from guesses.
    return {
        "type": "fragment",
        "fragment": {
            "content": text,
            "tokensCount": 1,
            "containsDrafted": False,
            "reasoningType": "none",
        },
    }


def stop_reason(result: GenerationResult, params: SamplingParams, calls: list[ToolCall]) -> str:
    if calls:
        return "toolCalls"
    if result.finish_reason == "cancelled":
        return "userStopped"
    if result.finish_reason == "length":
        # A remote engine that reported no usage stopped at the limit asked, if any.
        counted = result.completion_tokens if result.usage_known else params.max_tokens or 0
        limited = params.max_tokens is not None and counted >= params.max_tokens
        return "maxPredictedTokensReached" if limited else "contextLengthReached"
    return "eosFound"


def stats(result: GenerationResult, reason: str) -> dict[str, Any]:
    if not result.usage_known:  # a remote engine that reported no usage: no counts, no speed
        return {"stopReason": reason, "timeToFirstTokenSec": round(result.time_to_first_token, 4)}
    return {
        "stopReason": reason,
        "tokensPerSecond": round(result.tokens_per_second, 3),
        "timeToFirstTokenSec": round(result.time_to_first_token, 4),
        "promptTokensCount": result.prompt_tokens,
        "predictedTokensCount": result.completion_tokens,
        "totalTokensCount": result.prompt_tokens + result.completion_tokens,
        **drafts.sdk_stats(result.draft),
    }


def _preset_not_found(name: Any) -> NotFoundError:
    return NotFoundError(
        f"no preset matches {name!r}: lms has no presets",
        param="preset",
        hint="pass the settings in config= instead",
        data={
            wire.DISPLAY: {
                "code": "generic.presetNotFound",
                "specifiedFuzzyPresetIdentifier": str(name),
                "availablePresetsSample": [],
                "totalAvailablePresets": 0,
            }
        },
    )


def _tool_request(call: ToolCall) -> dict[str, Any]:
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        arguments = {}
    return {
        "type": "function",
        "id": call.id,
        "name": call.name,
        "arguments": arguments if isinstance(arguments, dict) else {},
    }


async def predict(channel: Channel, parameter: Any) -> None:
    if not isinstance(parameter, dict):
        raise MissingParameterError("'modelSpecifier' and 'history' are required", param="history")
    if parameter.get("fuzzyPresetIdentifier") is not None:
        raise _preset_not_found(parameter["fuzzyPresetIdentifier"])
    settings = await asyncio.to_thread(kvconfig.prediction, parameter.get("predictionConfigStack"))
    history.sdk_messages(parameter.get("history"))  # a bad history is refused before any load
    instance = await models.required_instance(channel, parameter, "modelSpecifier")
    if not isinstance(instance, RemoteModel):
        instance.engine  # noqa: B018  (refuses an embedding instance before any work)
    files, owner = channel.app[FILES], channel.client.scope
    plan: ChatPlan | None = None
    prompt: pipeline.Prompt
    if settings.raw_prompt:
        prompt = pipeline.TextPrompt(history.raw_prompt(parameter["history"], files, owner))
    else:
        messages = history.chat_messages(parameter["history"], files, owner)
        if settings.tools:
            plan = ChatPlan.read({"tools": settings.tools})
            prompt = pipeline.ChatPrompt(messages, plan.offered)
        else:
            prompt = pipeline.ChatPrompt(messages)
    run = await pipeline.start(
        instance,
        prompt,
        settings.params,
        record=channel.record_tokens,
        drafts=channel.manager.drafts(channel.allows, channel.hidden),
    )
    channel.on_cancel(run.cancel)
    output: ToolCallStream | None = plan.stream() if plan is not None else None
    async with run:
        await channel.send({"type": "promptProcessingProgress", "progress": 0.0})
        last = 0.0
        async for item in run.events():
            if isinstance(item, PromptProgress):
                if item.fraction > last:
                    last = item.fraction
                    progress = round(item.fraction, 4)
                    await channel.send({"type": "promptProcessingProgress", "progress": progress})
            elif output is None:
                await channel.send(fragment(item))
            else:
                for event in output.feed(item):
                    if isinstance(event, ContentDelta):
                        await channel.send(fragment(event.text))
    result = run.result
    assert result is not None
    calls: list[ToolCall] = []
    if output is not None and result.finish_reason != "cancelled":
        for event in output.finish():
            if isinstance(event, ContentDelta):
                await channel.send(fragment(event.text))
            elif isinstance(event, CallStarted):
                await channel.send({"type": "toolCallGenerationStart", "toolCallId": event.call_id})
        calls = output.calls
        for call in calls:
            await channel.send(
                {"type": "toolCallGenerationEnd", "toolCallRequest": _tool_request(call)}
            )
    await channel.finish(
        {
            "type": "success",
            "stats": stats(result, stop_reason(result, run.params, calls)),
            "modelInfo": records.instance_info(instance),
            "loadModelConfig": records.load_config(instance),
            "predictionConfig": {"fields": settings.echo},
        }
    )


async def _template_text(
    instance: Instance, parameter: dict[str, Any], files: FileStore, owner: str
) -> str:
    opts = parameter.get("opts") or {}
    if not isinstance(opts, dict):
        raise InvalidParameterError("'opts' must be an object", param="opts")
    messages = history.chat_messages(parameter.get("history"), files, owner)
    tools = ChatPlan.read({"tools": opts.get("toolDefinitions")}).offered
    text = await asyncio.to_thread(instance.chat_text, messages, tools)  # no CPU on the loop
    bos = instance.formatter.bos_token
    return text if opts.get("omitBosToken") or not bos else bos + text


async def apply_prompt_template(call: Call, parameter: Any) -> dict[str, Any]:
    if not isinstance(parameter, dict):
        raise MissingParameterError("'specifier' and 'history' are required", param="history")
    history.sdk_messages(parameter.get("history"))
    instance = await models.local_instance(call, parameter, "Applying the prompt template")
    instance.engine  # noqa: B018  (refuses an embedding instance, as predict would)
    text = await _template_text(instance, parameter, call.app[FILES], call.client.scope)
    return {"formatted": text}


ENDPOINTS: dict[tuple[str, str], Endpoint] = {
    ("llm", "predict"): channel(predict),
    ("llm", "applyPromptTemplate"): rpc(apply_prompt_template),
}
