"""The tool loop's logic with a scripted fake model and a fake MCP session (the real model and
real MCP servers are in tests/api/test_mcp.py): what is offered, run, refused, and when it
stops."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import mcp_types

from lms.inference.engine import GenerationResult
from lms.inference.generation import DraftStats
from lms.inference.sampling import SamplingParams
from lms.inference.tools import Tool
from lms.mcp import loop as tool_loop
from lms.mcp.loop import Toolbox, ToolLoop


class FakeGeneration:
    def __init__(
        self,
        text: str,
        prompt_tokens: list[int],
        params: SamplingParams,
        draft: DraftStats | None = None,
    ) -> None:
        self.text = text
        self.prompt_tokens = prompt_tokens
        self.params = params
        self.draft = draft
        self.result: GenerationResult | None = None

    async def events(self) -> Any:
        for start in range(0, len(self.text), 7):  # arrives in pieces, as tokens do
            yield self.text[start : start + 7]
        self.result = GenerationResult("stop", len(self.prompt_tokens), 5, 0.01, 0.1)
        self.result.draft = self.draft

    def cancel(self) -> None:
        pass


class FakeEngine:
    def __init__(self, outputs: list[str]) -> None:
        self.outputs = outputs
        self.params: list[SamplingParams] = []
        #: What speculative decoding did in each generation, in order (none: it was off).
        self.drafts: list[DraftStats | None] = []

    def check_grammar(self, grammar: str) -> None:
        """No vocabulary to compile against: the forced call's grammar is checked by the
        real model's tests (tests/api/test_mcp.py)."""

    def submit(
        self, tokens: list[int], params: SamplingParams, *, grammar_checked: bool = False
    ) -> FakeGeneration:
        assert grammar_checked or params.grammar is None  # the pipeline compiled it already
        self.params.append(params)
        draft = self.drafts.pop(0) if self.drafts else None
        return FakeGeneration(self.outputs.pop(0), tokens, params, draft)


class FakeFormatter:
    kind = "gemma"


class FakeModel:
    trained_for_tool_use = False


class FakeInstance:
    """What the loop uses of an instance: its template, engine and context."""

    formatter = FakeFormatter()
    model = FakeModel()
    context_length = 4096
    draft_model: str | None = None  # the default draft model (lms load --draft-model)

    def __init__(self, outputs: list[str]) -> None:
        self.engine = FakeEngine(outputs)
        self.prompts: list[tuple[list[dict[str, Any]], list[Tool]]] = []

    def chat_prompt(
        self, messages: list[dict[str, Any]], tools: Sequence[Tool] = ()
    ) -> tuple[list[int], tuple[str, ...]]:
        self.prompts.append((messages, list(tools)))
        return [1, 2, 3], ("<end_of_turn>",)


class FakeConnection:
    label = "docs"
    provider_info = {"type": "plugin", "plugin_id": "mcp/docs"}

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        self.calls.append((name, arguments))
        return mcp_types.CallToolResult(
            content=[mcp_types.TextContent(type="text", text=f"{name} says hi")]
        )


SEARCH_SCHEMA = {
    "type": "object",
    "properties": {"query": {"type": "string"}},
    "required": ["query"],
}
TOOLS = [
    mcp_types.Tool(name="fetch", description="Fetch the docs.", input_schema={"type": "object"}),
    mcp_types.Tool(name="search", description="Search the docs.", input_schema=SEARCH_SCHEMA),
    mcp_types.Tool(name="secret", description="Not for you.", input_schema={"type": "object"}),
]


def call(name: str, **arguments: Any) -> str:
    return json.dumps({"name": name, "arguments": arguments})


async def run(
    outputs: list[str],
    allowed: list[str] | None = None,
    *,
    force_first: bool = False,
    max_tool_rounds: int = tool_loop.MAX_TOOL_ROUNDS,
) -> tuple[ToolLoop, FakeInstance, FakeConnection, list[tool_loop.LoopEvent]]:
    instance = FakeInstance(outputs)
    connection = FakeConnection()
    toolbox = Toolbox()
    toolbox.add(connection, TOOLS, allowed)  # type: ignore[arg-type]
    loop = ToolLoop(
        instance,  # type: ignore[arg-type]
        toolbox,
        SamplingParams(temperature=0, max_tokens=8),
        force_first=force_first,
        max_tool_rounds=max_tool_rounds,
    )
    events = [event async for event in loop.run([{"role": "user", "content": "Docs?"}])]
    assert not instance.engine.outputs, "the loop stopped before the script ended"
    return loop, instance, connection, events


async def test_a_forced_call_then_the_answer() -> None:
    loop, instance, connection, events = await run(
        [call("fetch"), "The docs say hi."], ["fetch"], force_first=True
    )
    first, second = instance.engine.params
    assert first.grammar is not None and second.grammar is None
    assert first.max_tokens == tool_loop.FORCED_CALL_TOKENS  # a forced call is never cut at 8
    assert second.max_tokens == 8
    assert connection.calls == [("fetch", {})]
    provider = {"type": "plugin", "plugin_id": "mcp/docs"}
    assert loop.result.output == [
        {
            "type": "tool_call",
            "tool": "fetch",
            "arguments": {},
            "output": '[{"type": "text", "text": "fetch says hi"}]',
            "provider_info": provider,
        },
        {"type": "message", "content": "The docs say hi."},
    ]
    kinds = [type(e).__name__ for e in events]
    assert kinds[:3] == ["CallStart", "CallArguments", "CallSuccess"]
    assert kinds[-1] == "MessageEnd"
    # the model reads the result as text, in a turn of its own
    roles = [m["role"] for m in loop.result.messages]
    assert roles == ["assistant", "tool", "assistant"]
    assert loop.result.messages[1]["content"] == "fetch says hi"
    assert loop.result.prompt_tokens == 6 and loop.result.completion_tokens == 10


async def test_only_allowed_tools_are_offered() -> None:
    _, instance, _, _ = await run(["No call."], ["fetch"])
    offered = instance.prompts[0][1]
    assert [t.name for t in offered] == ["fetch"]


async def test_a_tool_outside_allowed_tools_is_never_run() -> None:
    loop, _, connection, events = await run([call("secret"), "Sorry."], ["fetch"])
    assert connection.calls == []
    assert loop.result.output[0] == {
        "type": "invalid_tool_call",
        "reason": "the tool 'secret' is not allowed in this request",
        "metadata": {"type": "invalid_name", "tool_name": "secret"},
    }
    assert isinstance(events[0], tool_loop.CallFailure)
    assert "Error:" in loop.result.messages[1]["content"]  # the model reads why


async def test_arguments_that_do_not_fit_the_schema_are_not_run() -> None:
    loop, _, connection, _ = await run([call("search", query=5), "Hm."], ["search"])
    assert connection.calls == []
    item = loop.result.output[0]
    assert item["type"] == "invalid_tool_call"
    assert item["metadata"] == {
        "type": "invalid_arguments",
        "tool_name": "search",
        "arguments": {"query": 5},
        "provider_info": {"type": "plugin", "plugin_id": "mcp/docs"},
    }
    assert "query" in item["reason"]


async def test_text_before_a_call_is_a_message_of_its_own() -> None:
    loop, _, connection, _ = await run(
        [f"Let me look.\n{call('search', query='install')}", "Use pip."], ["search"]
    )
    assert connection.calls == [("search", {"query": "install"})]
    assert [item["type"] for item in loop.result.output] == ["message", "tool_call", "message"]
    assert loop.result.output[0]["content"] == "Let me look.\n"


async def test_repeated_calls_end_tool_use() -> None:
    loop, instance, connection, _ = await run(
        [call("fetch"), call("fetch"), "The answer."], ["fetch"], force_first=True
    )
    assert connection.calls == [("fetch", {})]  # the repeat is not run
    assert instance.prompts[2][1] == []  # and the last round offers no tools
    assert [item["type"] for item in loop.result.output] == ["tool_call", "message"]


async def test_the_number_of_tool_rounds_is_bounded() -> None:
    loop, instance, connection, _ = await run(
        [call("search", query="a"), call("search", query="b"), "Done."],
        ["search"],
        max_tool_rounds=2,
    )
    assert len(connection.calls) == 2
    assert instance.prompts[2][1] == []
    assert loop.result.content == "Done."
    assert loop.result.rounds == 3


async def test_each_round_is_recorded_once_with_the_template_stops() -> None:
    instance = FakeInstance([call("fetch"), "The docs say hi."])
    toolbox = Toolbox()
    toolbox.add(FakeConnection(), TOOLS, ["fetch"])  # type: ignore[arg-type]
    recorded: list[tuple[int, int]] = []
    loop = ToolLoop(
        instance,  # type: ignore[arg-type]
        toolbox,
        SamplingParams(temperature=0, max_tokens=8, stop=("STOP",)),
        force_first=True,
        record=lambda prompt, completion: recorded.append((prompt, completion)),
    )
    async for _ in loop.run([{"role": "user", "content": "Docs?"}]):
        pass
    assert recorded == [(3, 5), (3, 5)]
    assert all(p.stop == ("STOP", "<end_of_turn>") for p in instance.engine.params)


async def test_draft_counts_are_summed_over_the_rounds() -> None:
    instance = FakeInstance([call("fetch"), "The docs say hi."])
    instance.draft_model = "someone/draft"  # the instance's default: every round uses it
    instance.engine.drafts = [
        DraftStats("someone/draft", total=4, accepted=2, rejected=1, ignored=1),
        DraftStats("someone/draft", total=6, accepted=5, rejected=1, ignored=0),
    ]
    toolbox = Toolbox()
    toolbox.add(FakeConnection(), TOOLS, ["fetch"])  # type: ignore[arg-type]
    loop = ToolLoop(
        instance,  # type: ignore[arg-type]
        toolbox,
        SamplingParams(temperature=0, max_tokens=8),
        force_first=True,
    )
    async for _ in loop.run([{"role": "user", "content": "Docs?"}]):
        pass
    assert [p.draft_model for p in instance.engine.params] == ["someone/draft"] * 2
    assert loop.result.draft == DraftStats(
        "someone/draft", total=10, accepted=7, rejected=2, ignored=1
    )


async def test_no_draft_counts_without_speculation() -> None:
    loop, _, _, _ = await run([call("fetch"), "The docs say hi."], ["fetch"], force_first=True)
    assert loop.result.draft is None
