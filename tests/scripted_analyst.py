"""A scripted analyst for LLM-mode tests and benchmarks: a model that reads the detectors' hypotheses
in its system prompt, looks at the dataset once, and reports back the way real models do — some
hypotheses confirmed under the same category and key with a root cause and a fix, some under its own
words with an example span, some not at all — plus one claim with evidence that does not exist and
one with no evidence at all. The report HALO builds from this must score at least the detectors'.

    with ScriptedLLM(analyst) as llm: ...
"""

from __future__ import annotations

import re
from typing import Any

from scripted_llm import Call, ChatRequest, ToolCalls

HYPOTHESIS = re.compile(
    r"^- (?P<title>.*) \((?P<category>[a-z_]+), key (?P<key>.*?), (?P<traces>\d+) traces, e\.g\. (?P<cited>.*)\)$",
    re.MULTILINE,
)
CITED = re.compile(r"\[span:([^\]:\s]+):([^\]\s]+)\]")


def hypotheses(request: ChatRequest) -> list[dict[str, Any]]:
    found = []
    for m in HYPOTHESIS.finditer(request.system_text):
        spans = CITED.findall(m["cited"])
        found.append({"category": m["category"], "key": m["key"], "spans": spans})
    return found


def findings(request: ChatRequest) -> list[dict[str, Any]]:
    reported: list[dict[str, Any]] = []
    for i, h in enumerate(hypotheses(request)):
        if i % 3 == 0:  # confirmed: same category and key, with a root cause and a better fix
            reported.append(
                {
                    "title": f"{h['key']} keeps failing",
                    "category": h["category"],
                    "key": h["key"],
                    "severity": "high",
                    "details": f"Root cause {i}: the harness hides the real error of {h['key']}.",
                    "recommendation": f"Fix {i}: surface the error of {h['key']} to the model.",
                }
            )
        elif i % 3 == 1 and h["spans"]:  # in its own words, about one example the detectors gave
            trace, span = h["spans"][0]
            reported.append(
                {
                    "title": "Tool calls failing in error traces",
                    "category": "other",
                    "evidence": [{"trace_id": trace, "span_id": span, "note": "an example"}],
                    "details": "Several steps fail here.",
                    "recommendation": "Look at the failing step.",
                }
            )
    reported.append(
        {
            "title": "made_up_tool is slow",
            "category": "latency",
            "key": "made_up_tool",
            "affected_traces": 40,
            "evidence": [{"trace_id": "no-such-trace", "span_id": "no-such-span", "excerpt": "took 30 s"}],
            "recommendation": "Cache made_up_tool.",
        }
    )
    reported.append(
        {
            "title": "Prompts are too long",
            "category": "cost",
            "key": "gpt-imaginary",
            "affected_traces": 50,
            "recommendation": "Trim the prompts.",
        }
    )
    return reported


def analyst(request: ChatRequest) -> Any:
    """The root agent looks at the overview once, then answers; sub-agents are never started."""
    if not request.tool_results:
        return ToolCalls([Call("get_dataset_overview", {})])
    cited = [f"[span:{t}:{s}]" for h in hypotheses(request)[:2] for t, s in h["spans"][:1]]
    answer = "# Findings\n\nThe detectors' hypotheses hold; examples: " + ", ".join(cited) + "."
    return ToolCalls([Call("final_answer", {"answer": answer, "findings": findings(request)})])
