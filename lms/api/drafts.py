"""What speculative decoding did for one generation, as each family reports it (docs/API.md,
Native chat; SDK endpoints): LM Studio's draft token counts, only when speculation was on for
the request (``GenerationResult.draft`` is not None). The OpenAI- and Anthropic-compatible
answers have no such fields and get none."""

from __future__ import annotations

from typing import Any

from lms.inference.generation import DraftStats


def native_stats(draft: DraftStats | None) -> dict[str, Any]:
    """The fields ``/api/v1/chat`` adds to its ``stats`` (none when ``draft`` is None)."""
    if draft is None:
        return {}
    stats: dict[str, Any] = {}
    if draft.model is not None:
        stats["draft_model"] = draft.model
    stats.update(
        total_draft_tokens_count=draft.total,
        accepted_draft_tokens_count=draft.accepted,
        rejected_draft_tokens_count=draft.rejected,
        ignored_draft_tokens_count=draft.ignored,
    )
    return stats


def sdk_stats(draft: DraftStats | None) -> dict[str, Any]:
    """The fields the SDK's ``predict`` adds to the ``stats`` of its ``success`` (the SDK's
    ``LlmPredictionStats``; none when ``draft`` is None)."""
    if draft is None:
        return {}
    stats: dict[str, Any] = {}
    if draft.model is not None:
        stats["usedDraftModelKey"] = draft.model
    stats.update(
        totalDraftTokensCount=draft.total,
        acceptedDraftTokensCount=draft.accepted,
        rejectedDraftTokensCount=draft.rejected,
        ignoredDraftTokensCount=draft.ignored,
    )
    return stats
