"""Simulated agent traces with planted systemic failures, and the ground truth to score detectors by.

`simulate()` writes a corpus of multi-turn, tool-using agent runs from five services that are
instrumented the way real ones are (three OpenInference flavours, OTel GenAI semconv, HALO's own
openai-agents exporter), plants failure patterns at known rates, sprinkles one-off errors that
must *not* be reported as systemic, and writes `<name>.truth.json` saying exactly which traces
carry which pattern.

Each trace is made in two stages: a *plan* (which agent, which tool calls, which retries and
errors: plain dataclasses that the failure modes mutate) and a *recording* (laying the plan out
in time and turning it into spans with one service's attribute conventions). Traces are made in
chunks of `CHUNK_TRACES`, each drawing from its own `Random` seeded by (seed, chunk), so output
streams, chunks can run on several processes, and the same arguments always give the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from functools import cached_property
from itertools import product
from pathlib import Path
from random import Random
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

from halo_rlm.__about__ import __version__

Category = Literal[
    "hallucinated_tool",
    "invalid_tool_arguments",
    "tool_error",
    "repetition_loop",
    "refusal",
    "max_turns",
    "timeout",
    "rate_limit",
    "latency",
    "cost",
    "context_overflow",
    "empty_or_truncated_output",
    "guardrail",
    "handoff",
]

# Share of traces carrying each planted pattern, by its name (the category, or a name of its own when a
# category has two). All sixteen are on, so the default corpus is a full evaluation set; about 55% of
# traces stay healthy.
DEFAULT_RATES: dict[str, float] = {
    "tool_error": 0.06,
    "rate_limit": 0.05,
    "latency": 0.04,
    "invalid_tool_arguments": 0.03,
    "hallucinated_tool": 0.03,
    "refusal": 0.03,
    "timeout": 0.025,
    "repetition_loop": 0.025,
    "empty_or_truncated_output": 0.025,
    "max_turns": 0.02,
    "cost": 0.02,
    "context_overflow": 0.02,
    "guardrail": 0.02,
    "handoff": 0.02,
    "bottleneck": 0.03,  # latency: a tool that is slow every time
    "tool_rate_limit": 0.03,  # rate_limit: a tool's 429s, retried by the harness with identical arguments
}
DEFAULT_DISTRACTOR_RATE = 0.02

BASE_TIME_NS = 1_777_852_800 * 10**9  # 2026-05-04T00:00:00Z; fixed so output never depends on the clock
CORPUS_SPAN_NS = 86_400 * 10**9  # traces arrive over one day whatever their number
MAX_TURNS = 10
MAX_OUTPUT_TOKENS = 1024


# ---------------------------------------------------------------------------------------------
# Ground truth


class Pattern(BaseModel):
    """One planted systemic failure. A detector finding matches it by `category` + `key`."""

    id: str
    category: Category
    key: str  # the tool, model, agent, guardrail or handoff target the failure is about
    description: str
    template: str | None = None  # the recurring message, variable parts as <placeholders>
    context: dict[str, str] = Field(default_factory=dict)  # where it happens: services, agents, model, tool
    affected_traces: int
    affected_trace_ids: list[str]
    systemic: bool = True


class Corpus(BaseModel):
    file: str
    format: Literal["halo", "otlp"]
    compressed: bool
    traces: int
    spans: int
    seed: int
    rates: dict[str, float]
    distractor_rate: float
    services: list[str]
    generator: str = f"halo_rlm.simulate {__version__}"


class GroundTruth(BaseModel):
    """What `simulate()` planted. Written next to the traces as `<name>.truth.json`."""

    corpus: Corpus
    patterns: list[Pattern]
    distractor_trace_ids: list[str]
    healthy_traces: int  # neither a pattern nor a distractor
    traces_path: Path = Field(exclude=True)
    truth_path: Path = Field(exclude=True)

    @classmethod
    def load(cls, truth_path: Path | str) -> GroundTruth:
        truth_path = Path(truth_path)
        data = orjson.loads(truth_path.read_bytes())
        return cls(**data, traces_path=truth_path.with_name(data["corpus"]["file"]), truth_path=truth_path)


# ---------------------------------------------------------------------------------------------
# The simulated world: models, tools, agents


@dataclass(frozen=True)
class _Model:
    name: str
    provider: str
    usd_per_mtok_in: float
    usd_per_mtok_out: float
    first_token_s: float
    ms_per_token: float
    reasoning: bool
    context_window: int


MODELS = {
    m.name: m
    for m in (
        _Model("gpt-5.4", "openai", 1.25, 10.0, 0.7, 7.0, True, 400_000),
        _Model("gpt-5.4-mini", "openai", 0.25, 2.0, 0.4, 4.0, True, 272_000),
        _Model("claude-sonnet-4-5", "anthropic", 3.0, 15.0, 1.1, 14.0, False, 200_000),
        _Model("claude-haiku-4-5", "anthropic", 1.0, 5.0, 0.5, 6.0, False, 200_000),
        _Model("gemini-3-flash", "google", 0.5, 3.0, 0.5, 4.0, True, 1_048_576),
    )
}


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


@dataclass(frozen=True)
class _Tool:
    name: str
    description: str
    params: Mapping[str, str | tuple[str, ...]]  # JSON-schema type, or the allowed enum values
    args: Callable[[dict, int], dict]  # (run facts, how many times the run called this tool before)
    result: Callable[[dict, int], str]
    median_ms: float

    @property
    def schema(self) -> dict:
        props = {
            name: {"type": "string", "enum": list(kind)} if isinstance(kind, tuple) else {"type": kind}
            for name, kind in self.params.items()
        }
        parameters = {"type": "object", "properties": props, "required": list(self.params)}
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": parameters},
        }


CARRIERS = ("DHL", "UPS", "FedEx", "La Poste", "PostNL", "GLS")
REGIONS = ("eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-southeast-1")
PRODUCTS = (
    ("Aero 3 headphones", "the USB-C dongle"),
    ("Trailrunner backpack", "the rain cover"),
    ("Nimbus smart lamp", "Google Home"),
    ("Kettle Pro", "120 V outlets"),
    ("Lumen desk mat", "wireless chargers"),
)
TOPICS = (
    "retrieval-augmented generation",
    "solid-state batteries",
    "mRNA vaccine stability",
    "small modular reactors",
    "protein structure prediction",
    "carbon capture membranes",
    "LLM agent evaluation",
    "quantum error correction",
    "urban heat islands",
    "microplastics in soil",
)
HOSTS = (
    "arxiv.org/abs/2604.",
    "www.nature.com/articles/s41586-026-",
    "pubs.acs.org/doi/10.1021/jacs.6c",
    "www.science.org/doi/10.1126/science.adq",
    "openreview.net/forum?id=Qx",
)
CITIES = (
    ("Lisbon", "LIS"),
    ("Tokyo", "HND"),
    ("Reykjavik", "KEF"),
    ("Mexico City", "MEX"),
    ("Cape Town", "CPT"),
    ("Vienna", "VIE"),
    ("Seoul", "ICN"),
    ("Montreal", "YUL"),
)
ORIGINS = ("SFO", "JFK", "LHR", "CDG", "FRA", "ORD", "AMS", "SEA")
SYMBOLS = (
    ("parse_config", "config/loader.py", "tests/test_loader.py::test_env_override"),
    ("RetryPolicy", "http/retry.py", "tests/test_retry.py::test_backoff_caps"),
    ("normalize_path", "fs/paths.py", "tests/test_paths.py::test_windows_drive"),
    ("TokenBucket", "ratelimit/bucket.py", "tests/test_bucket.py::test_refill"),
    ("render_invoice", "billing/pdf.py", "tests/test_pdf.py::test_currency_format"),
)
FIRST_NAMES = ("ana", "li", "maria", "tom", "sofia", "jamal", "yuki", "lucas", "emma", "noah", "ines", "omar")
DOMAINS = ("gmail.com", "outlook.com", "proton.me", "yahoo.fr", "web.de", "icloud.com")
PLANS = ("Pro monthly", "Team annual", "Starter monthly", "Business annual")
STREETS = ("Rue Oberkampf", "Calle Mayor", "Main Street", "Hauptstraße")
DAYS = {offset: (date(2026, 5, 4) + timedelta(days=offset)).isoformat() for offset in range(-10, 61)}


def _facts(rng: Random) -> dict:
    """The concrete values one run talks about (order numbers, cities, files...)."""
    # random() is several times cheaper than randint()/choice(), and this runs for every trace
    r = rng.random

    def pick(seq):
        return seq[int(r() * len(seq))]

    def num(low, high):
        return low + int(r() * (high - low + 1))

    product_, accessory = pick(PRODUCTS)
    city, airport = pick(CITIES)
    first = num(0, len(TOPICS) - 1)
    symbol, module, test = pick(SYMBOLS)
    shipped = num(-9, -2)
    hosts = num(0, len(HOSTS) - 1)
    return {
        "order_id": num(10_000, 99_999),
        "region": pick(REGIONS),
        "carrier": pick(CARRIERS),
        "ship_date": DAYS[shipped],
        "eta": DAYS[shipped + num(3, 8)],
        "product": product_,
        "accessory": accessory,
        "email": f"{pick(FIRST_NAMES)}.{num(1, 999)}@{pick(DOMAINS)}",
        "customer_id": f"cus_{rng.getrandbits(48):012x}",
        "ticket": f"TCK-{num(100_000, 999_999)}",
        "invoice_id": f"INV-2026-{num(1000, 99_999):05d}",
        "amount": f"{num(9, 480)}.{num(0, 99):02d}",
        "credit": pick((10, 15, 20, 25, 50)),
        "plan": pick(PLANS),
        "card": f"{num(0, 9999):04d}",
        "topic": TOPICS[first],
        "topic2": TOPICS[(first + num(1, len(TOPICS) - 1)) % len(TOPICS)],
        "urls": [f"https://{HOSTS[(hosts + k) % len(HOSTS)]}{num(10_000, 99_999)}" for k in range(3)],
        "city": city,
        "dest": airport,
        "origin": pick(ORIGINS),
        "date": DAYS[num(10, 60)],
        "nights": num(2, 9),
        "price": pick((120, 150, 180, 220, 300)),
        "symbol": symbol,
        "module": module,
        "test": test,
        "dir": pick(("src", "src/app", "tests", "scripts")),
        "street": f"{num(1, 250)} {pick(STREETS)}",
    }


def _hotel(f: dict, k: int) -> dict:
    name = f"{('Casa', 'Hotel', 'The')[k % 3]} {f['city']} {('Central', 'Riverside', 'Garden')[k % 3]}"
    return {"name": name, "price_per_night": f["price"] - 20 + 7 * k, "rating": round(4.1 + 0.2 * (k % 4), 1)}


def _grep_pattern(f: dict, i: int) -> str:
    """Distinct per call, so a long search never looks like a repetition loop."""
    s = f["symbol"]
    return (
        s,
        f"def {s}",
        f"{s}(",
        f"import {s}",
        "TODO",
        "raise ",
        "strict=",
        "return None",
        "logger.",
        "@pytest",
    )[i % 10]


TOOLS = {
    t.name: t
    for t in (
        # support-bot
        _Tool(
            "lookup_order",
            "Look up an order by its number.",
            {"order_id": "integer"},
            lambda f, i: {"order_id": f["order_id"]},
            lambda f, i: _json(
                {
                    "order_id": f["order_id"],
                    "status": "shipped",
                    "carrier": f["carrier"],
                    "shipped_at": f["ship_date"],
                    "eta": f["eta"],
                    "region": f["region"],
                }
            ),
            140,
        ),
        _Tool(
            "get_customer",
            "Fetch a customer profile by email.",
            {"email": "string"},
            lambda f, i: {"email": f["email"]},
            lambda f, i: _json(
                {"customer_id": f["customer_id"], "email": f["email"], "status": "locked", "failed_logins": 6}
            ),
            90,
        ),
        _Tool(
            "search_kb",
            "Search the help-center knowledge base.",
            {"query": "string"},
            lambda f, i: {"query": f"{f['product']} {f['accessory']} compatibility"},
            lambda f, i: _json(
                [
                    {
                        "title": f"{f['product']}: compatibility guide",
                        "score": 0.87,
                        "snippet": f"The {f['product']} works with {f['accessory']} out of the box.",
                    }
                ]
            ),
            260,
        ),
        _Tool(
            "create_ticket",
            "Open a support ticket.",
            {"subject": "string", "priority": ("low", "normal", "high")},
            lambda f, i: {"subject": f"Account locked: {f['email']}", "priority": "high"},
            lambda f, i: _json({"ticket_id": f["ticket"], "queue": "account-security"}),
            310,
        ),
        _Tool(
            "update_shipping_address",
            "Change the shipping address of an order that has not shipped yet.",
            {"order_id": "integer", "address": "string"},
            lambda f, i: {"order_id": f["order_id"], "address": f["street"]},
            lambda f, i: _json({"order_id": f["order_id"], "address": f["street"], "updated": True}),
            220,
        ),
        _Tool(
            "transfer_to_refund_agent",
            "Hand the conversation to the refunds specialist.",
            {},
            lambda f, i: {},
            lambda f, i: _json({"assistant": "RefundAgent"}),
            1,
        ),
        _Tool(
            "issue_refund",
            "Refund an order, fully or partly.",
            {"order_id": "integer", "amount": "number", "reason": "string"},
            lambda f, i: {"order_id": f["order_id"], "amount": float(f["amount"]), "reason": "damaged"},
            lambda f, i: _json({"refund_id": f"re_{f['customer_id'][4:]}", "status": "pending"}),
            480,
        ),
        # research-assistant
        _Tool(
            "web_search",
            "Search the web.",
            {"query": "string"},
            lambda f, i: {"query": f"{(f['topic'], f['topic2'])[i % 2]} 2026 review"},
            lambda f, i: _json(
                [
                    {
                        "title": f"Advances in {(f['topic'], f['topic2'])[i % 2]} ({2026 - k})",
                        "url": f["urls"][k],
                    }
                    for k in range(3)
                ]
            ),
            650,
        ),
        _Tool(
            "fetch_url",
            "Download a web page and return its text.",
            {"url": "string"},
            lambda f, i: {"url": f["urls"][i % 3]},
            lambda f, i: (
                f"# Advances in {f['topic']}\n\nRecent work reports a 2-3x improvement over 2024 "
                "baselines, with open questions about cost and reproducibility. "
                f"[{f['urls'][i % 3]}]"
            ),
            700,
        ),
        _Tool(
            "read_pdf",
            "Extract text from a PDF.",
            {"url": "string", "pages": "string"},
            lambda f, i: {"url": f["urls"][0] + ".pdf", "pages": "1-4"},
            lambda f, i: (
                f"Abstract. We study {f['topic']} ... Conclusion: the effect holds across three "
                "datasets but shrinks at scale."
            ),
            800,
        ),
        _Tool(
            "save_note",
            "Save a note to the user's notebook.",
            {"title": "string", "body": "string"},
            lambda f, i: {"title": f"{f['topic']} vs {f['topic2']}", "body": "Summary draft (see sources)."},
            lambda f, i: _json({"note_id": f"note_{f['order_id']}", "saved": True}),
            120,
        ),
        # billing-agent
        _Tool(
            "get_invoice",
            "Fetch one invoice.",
            {"invoice_id": "string"},
            lambda f, i: {"invoice_id": f["invoice_id"]},
            lambda f, i: _json(
                {
                    "invoice_id": f["invoice_id"],
                    "total": f["amount"],
                    "currency": "USD",
                    "lines": [{"description": f["plan"], "amount": f["amount"]}],
                    "status": "paid",
                }
            ),
            120,
        ),
        _Tool(
            "list_invoices",
            "List a customer's invoices.",
            {"customer_id": "string", "status": ("paid", "open", "all")},
            lambda f, i: {"customer_id": f["customer_id"], "status": "open"},
            lambda f, i: _json([{"invoice_id": f["invoice_id"], "total": f["amount"], "due": f["eta"]}]),
            240,
        ),
        _Tool(
            "apply_credit",
            "Apply a credit to a customer's balance.",
            {"customer_id": "string", "amount_cents": "integer", "reason": "string"},
            lambda f, i: {
                "customer_id": f["customer_id"],
                "amount_cents": f["credit"] * 100,
                "reason": "goodwill",
            },
            lambda f, i: _json({"balance_cents": -f["credit"] * 100, "applied": True}),
            200,
        ),
        _Tool(
            "update_payment_method",
            "Set the default card.",
            {"customer_id": "string", "card_last4": "string"},
            lambda f, i: {"customer_id": f["customer_id"], "card_last4": f["card"]},
            lambda f, i: _json({"default_card": f"**** {f['card']}", "updated": True}),
            350,
        ),
        # code-helper
        _Tool(
            "list_files",
            "List files under a directory.",
            {"path": "string", "pattern": "string"},
            lambda f, i: {"path": ("src", "tests", "src/app", "scripts", "docs")[i % 5], "pattern": "*.py"},
            lambda f, i: _json([f["module"], "cli.py", "utils.py", "__init__.py"]),
            40,
        ),
        _Tool(
            "read_file",
            "Read lines of a file.",
            {"path": "string", "start": "integer", "end": "integer"},
            lambda f, i: {"path": f["module"], "start": 1 + 60 * i, "end": 60 + 60 * i},
            lambda f, i: (
                f"def {f['symbol']}(value, *, strict=False):\n    if value is None:\n"
                "        return {}\n    ..."
            ),
            30,
        ),
        _Tool(
            "grep",
            "Search files for a regex.",
            {"pattern": "string", "path": "string"},
            lambda f, i: {"pattern": _grep_pattern(f, i), "path": "."},
            lambda f, i: (
                f"{f['module']}:12:def {f['symbol']}(value, *, strict=False):\n"
                f"cli.py:88:    {f['symbol']}(raw)"
            ),
            70,
        ),
        _Tool(
            "index_repository",
            "Build the code index the other tools search (slow: it reads the whole repository).",
            {"root": "string"},
            lambda f, i: {"root": "."},
            lambda f, i: (
                f"indexed 4,812 files and 61,233 symbols; {f['module']} is in module {f['module'].split('/')[0]}"
            ),
            24_000,
        ),
        _Tool(
            "run_tests",
            "Run pytest on a target.",
            {"target": "string"},
            lambda f, i: {"target": f["test"]},
            lambda f, i: f"FAILED {f['test']} - AssertionError: expected {{}} got None\n1 failed, 41 passed",
            900,
        ),
        # travel-planner
        _Tool(
            "search_flights",
            "Search flights.",
            {
                "origin": "string",
                "destination": "string",
                "departure_date": "string",
                "cabin": ("economy", "premium_economy", "business", "first"),
            },
            lambda f, i: {
                "origin": f["origin"],
                "destination": f["dest"],
                "departure_date": f["date"],
                "cabin": "economy",
            },
            lambda f, i: _json(
                [
                    {
                        "flight": f"{f['origin']}-{f['dest']}-{k}",
                        "depart": f"{f['date']}T0{7 + k}:40",
                        "price_usd": 420 + 85 * k,
                    }
                    for k in range(3)
                ]
            ),
            700,
        ),
        _Tool(
            "search_hotels",
            "Search hotels.",
            {"city": "string", "check_in": "string", "nights": "integer", "max_price": "integer"},
            lambda f, i: {
                "city": f["city"],
                "check_in": f["date"],
                "nights": f["nights"],
                "max_price": f["price"],
            },
            lambda f, i: _json([_hotel(f, k) for k in range(3)]),
            600,
        ),
        _Tool(
            "get_weather",
            "Forecast for a city and date.",
            {"city": "string", "date": "string"},
            lambda f, i: {"city": f["city"], "date": f["date"]},
            lambda f, i: _json(
                {"city": f["city"], "high_c": 19 + i, "low_c": 11, "summary": "partly cloudy"}
            ),
            150,
        ),
    )
}


@dataclass(frozen=True)
class _Scenario:
    """A kind of request an agent gets: the question, the tool calls it takes, the answer."""

    ask: Mapping[str, str]  # by language; templates over the run facts
    turns: tuple[tuple[str, ...], ...]  # tools called per model turn (several = parallel calls)
    answer: Mapping[str, str]
    handoff: tuple[str, tuple[tuple[str, ...], ...]] | None = None  # (agent, its turns) after the last turn

    @cached_property
    def tools(self) -> frozenset[str]:
        turns = (*self.turns, *(self.handoff[1] if self.handoff else ()))
        return frozenset(tool for turn in turns for tool in turn)


@dataclass(frozen=True)
class _Agent:
    name: str
    instructions: str
    tools: tuple[str, ...]
    models: tuple[tuple[str, float], ...]  # (model, share of this agent's traffic)
    scenarios: tuple[_Scenario, ...] = ()
    guardrail: str | None = None  # an output guardrail that runs after the final answer

    @cached_property
    def tool_schemas(self) -> list[str]:
        return [_json(TOOLS[t].schema) for t in self.tools]

    @cached_property
    def tool_definitions(self) -> str:
        return _json([_genai_definition(TOOLS[t].schema) for t in self.tools])


def _genai_definition(schema: dict) -> dict:
    return {"type": "function", **schema["function"]}


LANGS = ("en", "es", "fr", "de")
REFUSALS = {
    "en": ("I'm sorry, but I can't help with that.", "I'm sorry, but I can't assist with that request."),
    "es": ("Lo siento, no puedo ayudar con eso.", "Lo siento, pero no puedo ayudarte con esa solicitud."),
    "fr": (
        "Je suis désolé, mais je ne peux pas vous aider avec cela.",
        "Je suis désolé, mais je ne peux pas répondre à cette demande.",
    ),
    "de": (
        "Es tut mir leid, aber dabei kann ich nicht helfen.",
        "Es tut mir leid, aber bei dieser Anfrage kann ich Ihnen nicht helfen.",
    ),
}
ORDER_MISSING = {
    "en": "I couldn't find order {order_id}. Could you double-check the number in your confirmation email?",
    "es": "No encuentro el pedido {order_id}. ¿Puedes comprobar el número en tu correo de confirmación?",
    "fr": (
        "Je ne trouve pas la commande {order_id}. Pouvez-vous vérifier le numéro dans votre e-mail de "
        "confirmation ?"
    ),
    "de": (
        "Ich kann die Bestellung {order_id} nicht finden. Können Sie die Nummer in Ihrer "
        "Bestätigungs-E-Mail prüfen?"
    ),
}
TRANSFER_FAILED = {
    "en": (
        "I'm sorry, I couldn't transfer you to our refunds team. I've noted your request for order "
        "{order_id}."
    ),
    "es": (
        "Lo siento, no he podido pasarte con el equipo de reembolsos. He anotado tu solicitud del pedido "
        "{order_id}."
    ),
    "fr": (
        "Désolé, je n'ai pas pu vous transférer au service remboursements. J'ai noté votre demande pour "
        "la commande {order_id}."
    ),
    "de": (
        "Leider konnte ich Sie nicht an das Erstattungsteam weiterleiten. Ich habe Ihre Anfrage zu "
        "Bestellung {order_id} notiert."
    ),
}

_ORDER_STATUS = _Scenario(
    {
        "en": "Where is my order {order_id}? It still hasn't arrived.",
        "es": "¿Dónde está mi pedido {order_id}? Todavía no ha llegado.",
        "fr": "Où en est ma commande {order_id} ? Je ne l'ai toujours pas reçue.",
        "de": "Wo ist meine Bestellung {order_id}? Sie ist immer noch nicht angekommen.",
    },
    (("lookup_order",),),
    {
        "en": "Your order {order_id} shipped with {carrier} on {ship_date} and should arrive by {eta}.",
        "es": "Tu pedido {order_id} se envió con {carrier} el {ship_date} y debería llegar antes del {eta}.",
        "fr": (
            "Votre commande {order_id} a été expédiée avec {carrier} le {ship_date} et devrait arriver d'ici "
            "le {eta}."
        ),
        "de": (
            "Ihre Bestellung {order_id} wurde am {ship_date} mit {carrier} versendet und sollte bis zum "
            "{eta} ankommen."
        ),
    },
)
_REFUND = _Scenario(
    {
        "en": "I'd like a refund for order {order_id}, the item arrived damaged.",
        "es": "Quiero un reembolso del pedido {order_id}, el artículo llegó dañado.",
        "fr": "Je voudrais être remboursé pour la commande {order_id}, l'article est arrivé endommagé.",
        "de": "Ich möchte eine Rückerstattung für Bestellung {order_id}, der Artikel kam beschädigt an.",
    },
    (("lookup_order",), ("transfer_to_refund_agent",)),
    {
        "en": "I've refunded ${amount} for order {order_id}; it will show up within 5-7 business days.",
        "es": "He reembolsado {amount} $ del pedido {order_id}; lo verás en 5-7 días hábiles.",
        "fr": "J'ai remboursé {amount} $ pour la commande {order_id} ; vous le verrez sous 5 à 7 jours ouvrés.",
        "de": "Ich habe {amount} $ für Bestellung {order_id} erstattet; das dauert 5-7 Werktage.",
    },
    handoff=("RefundAgent", (("issue_refund",),)),
)
_COMPATIBILITY = _Scenario(
    {
        "en": "Does the {product} work with {accessory}?",
        "es": "¿El {product} funciona con {accessory}?",
        "fr": "Est-ce que le {product} fonctionne avec {accessory} ?",
        "de": "Funktioniert der {product} mit {accessory}?",
    },
    (("search_kb",),),
    {
        "en": "Yes. The {product} works with {accessory} out of the box, no adapter needed.",
        "es": "Sí. El {product} funciona con {accessory} sin necesidad de adaptador.",
        "fr": "Oui. Le {product} fonctionne avec {accessory} sans adaptateur.",
        "de": "Ja. Der {product} funktioniert ohne Adapter mit {accessory}.",
    },
)

AGENTS = {
    a.name: a
    for a in (
        _Agent(
            "SupportAgent",
            "You are the customer support assistant for Acme Store. Answer in the customer's language. Use "
            "tools to look up orders and accounts; never reveal payment details or personal data. Transfer "
            "refund requests to the refunds specialist.",
            (
                "lookup_order",
                "get_customer",
                "search_kb",
                "create_ticket",
                "update_shipping_address",
                "transfer_to_refund_agent",
            ),
            (("gpt-5.4", 0.6), ("gpt-5.4-mini", 0.4)),
            (
                _ORDER_STATUS,
                _REFUND,
                _COMPATIBILITY,
                _Scenario(
                    {"en": "Can you change the shipping address on order {order_id} to {street}?"},
                    (("lookup_order",), ("update_shipping_address",)),
                    {"en": "Done: order {order_id} will now ship to {street}."},
                ),
                _Scenario(
                    {"en": "I can't log in with {email}, it says my account is locked."},
                    (("get_customer",), ("create_ticket",)),
                    {
                        "en": "Your account was locked after several failed logins. I've opened ticket "
                        "{ticket}; security will email {email} within the hour."
                    },
                ),
            ),
            guardrail="pii_filter",
        ),
        _Agent(
            "RefundAgent",
            "You process refunds for Acme Store. Confirm the amount before refunding.",
            ("lookup_order", "issue_refund"),
            (("gpt-5.4", 1.0),),
        ),
        _Agent(
            "ResearchAgent",
            "You are a research assistant. Search, read primary sources, cite them, and keep summaries short.",
            ("web_search", "fetch_url", "read_pdf", "save_note"),
            (("claude-sonnet-4-5", 0.7), ("claude-haiku-4-5", 0.3)),
            (
                _Scenario(
                    {"en": "Summarize the most recent findings on {topic}."},
                    (("web_search",), ("fetch_url", "fetch_url")),
                    {
                        "en": "Recent work on {topic} reports 2-3x gains over 2024 baselines, though cost "
                        "and reproducibility remain open. Sources: [1] {urls[0]} [2] {urls[1]}"
                    },
                ),
                _Scenario(
                    {"en": "Compare {topic} with {topic2} and save a short note for my report."},
                    (("web_search", "web_search"), ("fetch_url",), ("save_note",)),
                    {
                        "en": "Saved a note comparing {topic} and {topic2}: both improved quickly, but "
                        "{topic} has stronger evidence. Source: {urls[0]}"
                    },
                ),
                _Scenario(
                    {"en": "What does the paper at {urls[0]}.pdf conclude?"},
                    (("read_pdf",),),
                    {"en": "It concludes the effect holds on three datasets but shrinks at scale."},
                ),
            ),
        ),
        _Agent(
            "BillingAgent",
            "You are the billing assistant. Explain charges, list invoices, apply agreed credits and update "
            "payment methods. Amounts are in USD.",
            ("get_invoice", "list_invoices", "apply_credit", "update_payment_method"),
            (("gpt-5.4-mini", 0.7), ("gpt-5.4", 0.3)),
            (
                _Scenario(
                    {"en": "Why was I charged ${amount} on invoice {invoice_id}?"},
                    (("get_invoice",),),
                    {"en": "Invoice {invoice_id} is the renewal of your {plan} plan (${amount})."},
                ),
                _Scenario(
                    {"en": "Show me my unpaid invoices."},
                    (("list_invoices",),),
                    {"en": "You have one open invoice, {invoice_id}, for ${amount}, due {eta}."},
                ),
                _Scenario(
                    {"en": "You promised me a ${credit} credit on invoice {invoice_id}, please apply it."},
                    (("get_invoice",), ("apply_credit",)),
                    {"en": "I've applied a ${credit} credit; it will be deducted from your next invoice."},
                ),
                _Scenario(
                    {"en": "Please switch my payment method to the card ending in {card}."},
                    (("update_payment_method",),),
                    {"en": "Your default card is now the one ending in {card}."},
                ),
            ),
        ),
        _Agent(
            "CodeHelper",
            "You are a coding assistant with read access to the repository. Find the cause before proposing "
            "a fix.",
            ("list_files", "read_file", "grep", "run_tests", "index_repository"),
            (("gemini-3-flash", 0.5), ("gpt-5.4-mini", 0.5)),
            (
                _Scenario(
                    {"en": "Why is {test} failing?"},
                    (("run_tests",), ("grep",), ("read_file",)),
                    {
                        "en": "`{symbol}` returns None instead of {{}} when the value is missing; the test "
                        "expects an empty dict. Return `{{}}` on line 3 of {module}."
                    },
                ),
                _Scenario(
                    {"en": "Where is `{symbol}` defined and who calls it?"},
                    (("grep",), ("read_file",)),
                    {"en": "`{symbol}` is defined in {module} (line 12) and called from cli.py line 88."},
                ),
                _Scenario(
                    {"en": "List the Python files under {dir}."},
                    (("list_files",),),
                    {"en": "There are four: {module}, cli.py, utils.py and __init__.py."},
                ),
            ),
        ),
        _Agent(
            "TravelPlanner",
            "You plan trips: flights, hotels and weather. Always give prices in USD and dates as YYYY-MM-DD.",
            ("search_flights", "search_hotels", "get_weather"),
            (("claude-sonnet-4-5", 0.5), ("gemini-3-flash", 0.5)),
            (
                _Scenario(
                    {"en": "Find me a flight from {origin} to {dest} on {date}."},
                    (("search_flights",),),
                    {"en": "The cheapest option is {origin}-{dest}-0 leaving {date} at 07:40 for $420."},
                ),
                _Scenario(
                    {
                        "en": "Plan a {nights}-night trip to {city} from {origin}: flights and a hotel "
                        "under ${price}/night."
                    },
                    (("search_flights", "search_hotels"), ("get_weather",)),
                    {
                        "en": "Fly {origin}-{dest}-0 on {date} ($420) and stay at Casa {city} Central. "
                        "Expect partly cloudy weather around 19°C."
                    },
                ),
                _Scenario(
                    {"en": "Find a hotel in {city} under ${price} a night for {nights} nights from {date}."},
                    (("search_hotels",),),
                    {"en": "Casa {city} Central fits your budget and is rated 4.1."},
                ),
            ),
        ),
    )
}


# ---------------------------------------------------------------------------------------------
# Instrumentation conventions: how each service turns a run into span names and attributes

INTERNAL, CLIENT = 1, 3
UNSET, OK, ERROR = 0, 1, 2
SITE_PACKAGES = "/app/.venv/lib/python3.12/site-packages"


class _Span:
    __slots__ = (
        "attrs",
        "end",
        "events",
        "kind",
        "message",
        "name",
        "parent_id",
        "span_id",
        "start",
        "status",
    )

    def __init__(self, span_id: int, parent_id: int | None, start: int):
        self.span_id, self.parent_id, self.start = span_id, parent_id, start
        self.name, self.kind, self.end = "", INTERNAL, start
        self.status, self.message = UNSET, ""
        self.attrs: dict = {}
        self.events: list | None = None  # (name, time, attributes)


@dataclass
class _Usage:
    prompt: int
    completion: int
    cached: int = 0
    reasoning: int = 0
    cost: float = 0.0


Failing = Literal["agent", "llm", "tool", "handoff"]


def _stacktrace(what: Failing, function: str, exc: str, message: str, framework: str, app: str) -> str:
    """A plausible Python traceback; the frames depend on whether a tool, the model or the run failed."""
    raised = f"raise {exc.rsplit('.', 1)[-1]}(detail)"
    if what == "tool":
        frames = ((framework, "run", "return self._run(*args, **kwargs)"), (app, function, raised))
    elif what == "llm":
        frames = (
            (app, "call_model", "response = await client.create(**request)"),
            (
                f"{SITE_PACKAGES}/{exc.split('.')[0]}/_base_client.py",
                "request",
                "raise self._make_status_error_from_response(err.response) from None",
            ),
        )
    else:
        frames = ((app, "handle", "result = await runner.run(agent, question)"), (framework, "run", raised))
    lines = [
        f'  File "{file}", line {30 + 7 * (len(file + func) % 61)}, in {func}\n    {code}'
        for file, func, code in frames
    ]
    return "Traceback (most recent call last):\n" + "\n".join(lines) + f"\n{exc}: {message}"


@dataclass(frozen=True)
class _OpenInference:
    """OpenInference attributes as one instrumentation library writes them; the fields are its habits."""

    scope: tuple[str, str]
    messages: Literal["blob", "flat", "both"]  # JSON-string `llm.input_messages`, indexed keys, or both
    span_names: Mapping[str, str]  # per span type, formatted with the agent or tool name
    llm_kind: int = INTERNAL
    turn_name: str | None = None  # a CHAIN span around each turn
    non_fatal_tool_errors: bool = False  # openai-agents: the error text goes back to the model as output
    exception_events: bool = True
    cost: bool = False  # `llm.cost.total`
    finish_reason: bool = False  # `llm.finish_reason`
    llm_tools: bool = True  # `llm.tools.N.tool.json_schema`; otherwise `agent.tools` on the agent span
    halo_projection: str | None = None  # HALO's `inference.*` keys, for this project id
    frames: tuple[str, str] = ("", "")  # (framework file, app file) for stack traces
    ok: int = OK

    def agent(self, s: _Span, run: _Run, agent: _Agent, question: str, answer: str | None) -> None:
        s.name, s.kind = self.span_names["agent"].format(agent.name), INTERNAL
        a = s.attrs
        a["openinference.span.kind"] = "AGENT"
        a["agent.name"] = agent.name
        if not self.llm_tools:
            offered = [t for t in agent.tools if not t.startswith("transfer_to_")]
            offered += [t["function"]["name"] for t in run.extra_tools if agent is run.agent]
            a["agent.tools"] = _json(offered)
            a["agent.handoffs"] = _json(["RefundAgent"] if "transfer_to_refund_agent" in agent.tools else [])
            a["agent.output_type"] = "str"
        a["input.value"] = question
        if answer is not None:
            a["output.value"] = answer
        a["session.id"], a["user.id"] = run.session_id, run.user_id
        self._project(s, run, "AGENT", agent)

    def llm(
        self,
        s: _Span,
        run: _Run,
        agent: _Agent,
        inputs: list[dict],
        output: dict | None,
        usage: _Usage | None,
        extra_tools: list[dict],
        finish: str,
    ) -> None:
        model = run.model
        s.name, s.kind = self.span_names["llm"], self.llm_kind
        a = s.attrs
        a["openinference.span.kind"] = "LLM"
        a["llm.model_name"], a["llm.provider"] = model.name, model.provider
        a["llm.invocation_parameters"] = _json(
            {"temperature": 0.2, "max_tokens": MAX_OUTPUT_TOKENS, "tool_choice": "auto"}
        )
        self._messages(a, "llm.input_messages", inputs)
        if output is not None:
            self._messages(a, "llm.output_messages", [output])
        if self.llm_tools:
            for i, schema in enumerate(agent.tool_schemas + [_json(t) for t in extra_tools]):
                a[f"llm.tools.{i}.tool.json_schema"] = schema
        if usage is not None:
            a["llm.token_count.prompt"] = usage.prompt
            a["llm.token_count.completion"] = usage.completion
            a["llm.token_count.total"] = usage.prompt + usage.completion
            if usage.cached:
                a["llm.token_count.prompt_details.cache_read"] = usage.cached
            if usage.reasoning:
                a["llm.token_count.completion_details.reasoning"] = usage.reasoning
            if self.cost:
                a["llm.cost.total"] = usage.cost
            if self.finish_reason:
                a["llm.finish_reason"] = finish
        a["session.id"], a["user.id"] = run.session_id, run.user_id
        self._project(s, run, "LLM", agent, usage)

    def tool(self, s: _Span, run: _Run, agent: _Agent, call: _Call) -> None:
        s.name, s.kind = self.span_names["tool"].format(call.tool), INTERNAL
        a = s.attrs
        a["openinference.span.kind"] = "TOOL"
        a["tool.name"] = call.tool
        a["input.value"] = _json(call.args)
        if call.error is None:
            a["output.value"] = call.result
        elif self.non_fatal_tool_errors:
            a["output.value"] = call.error
        self._project(s, run, "TOOL", agent)

    def turn(self, s: _Span, run: _Run, agent: _Agent, n: int, usage: _Usage) -> None:
        s.name, s.kind = self.turn_name or "", INTERNAL
        a = s.attrs
        a["openinference.span.kind"] = "CHAIN"
        if self.halo_projection:  # openai-agents custom span data, as HALO's exporter flattens it
            a["sdk.span.type"], a["sdk.span.name"] = "custom", "turn"
            a["sdk.data.turn"], a["sdk.data.agent_name"] = n, agent.name
            a["sdk.data.usage"] = _json(
                {
                    "input_tokens": usage.prompt,
                    "output_tokens": usage.completion,
                    "cached_input_tokens": usage.cached,
                }
            )
        else:  # LangGraph's node metadata
            a["metadata"] = _json({"langgraph_step": n, "langgraph_node": "agent"})
        self._project(s, run, "SPAN", agent)

    def handoff(self, s: _Span, run: _Run, source: _Agent, target: str) -> None:
        s.name, s.kind = "handoff", INTERNAL
        a = s.attrs
        a["openinference.span.kind"] = "CHAIN"
        a["agent.handoff.from"], a["agent.handoff.to"] = source.name, target
        self._project(s, run, "SPAN", source)

    def guardrail(self, s: _Span, run: _Run, agent: _Agent, name: str, triggered: bool) -> None:
        s.name, s.kind = f"guardrail.{name}", INTERNAL
        a = s.attrs
        a["openinference.span.kind"] = "GUARDRAIL"
        a["guardrail.name"], a["guardrail.triggered"] = name, triggered
        self._project(s, run, "GUARDRAIL", agent)

    def fail(self, s: _Span, what: Failing, message: str, exc: str) -> None:
        s.status = ERROR
        if what == "tool" and self.non_fatal_tool_errors:
            s.message = "Error running tool (non-fatal)"
            return
        s.message = f"{exc}: {message}" if what == "tool" else message
        if self.exception_events:
            trace = _stacktrace(what, s.name, exc, message, *self.frames)
            s.events = [
                (
                    "exception",
                    s.end,
                    {
                        "exception.type": exc,
                        "exception.message": message,
                        "exception.stacktrace": trace,
                        "exception.escaped": False,
                    },
                )
            ]

    def _messages(self, a: dict, prefix: str, messages: list[dict]) -> None:
        if self.messages != "flat":
            a[prefix] = _json(messages)
        if self.messages == "blob":
            return
        for i, m in enumerate(messages):
            p = f"{prefix}.{i}.message."
            a[p + "role"] = m["role"]
            if m.get("content") is not None:
                a[p + "content"] = m["content"]
            if "tool_call_id" in m:
                a[p + "tool_call_id"] = m["tool_call_id"]
            for k, tc in enumerate(m.get("tool_calls", ())):
                q = f"{p}tool_calls.{k}.tool_call."
                a[q + "id"] = tc["id"]
                a[q + "function.name"] = tc["function"]["name"]
                a[q + "function.arguments"] = tc["function"]["arguments"]

    def _project(self, s: _Span, run: _Run, kind: str, agent: _Agent, usage: _Usage | None = None) -> None:
        """HALO's exporter adds its `inference.*` projection to every span, null where it has no value."""
        if not self.halo_projection:
            return
        a, llm = s.attrs, kind == "LLM"
        a["inference.export.schema_version"] = 1
        a["inference.project_id"] = self.halo_projection
        a["inference.observation_kind"] = kind
        a["inference.llm.provider"] = run.model.provider if llm else None
        a["inference.llm.model_name"] = run.model.name if llm else None
        a["inference.llm.input_tokens"] = usage.prompt if usage else None
        a["inference.llm.output_tokens"] = usage.completion if usage else None
        a["inference.llm.cached_input_tokens"] = usage.cached if usage else None
        a["inference.llm.cost.total"] = None
        a["inference.user_id"], a["inference.session_id"] = run.user_id, run.session_id
        a["inference.agent_name"] = agent.name


_GENAI_PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "google": "gcp.gemini"}
_SERVERS = {
    "openai": "api.openai.com",
    "anthropic": "api.anthropic.com",
    "google": "generativelanguage.googleapis.com",
}


@dataclass(frozen=True)
class _GenAI:
    """OpenTelemetry GenAI semantic conventions (`gen_ai.*`), messages as role + parts JSON."""

    scope: tuple[str, str]
    frames: tuple[str, str]
    turn_name = None
    ok = UNSET  # plain OTel SDKs leave successful spans unset

    def agent(self, s: _Span, run: _Run, agent: _Agent, question: str, answer: str | None) -> None:
        s.name, s.kind = f"invoke_agent {agent.name}", INTERNAL
        a = s.attrs
        a["gen_ai.operation.name"] = "invoke_agent"
        a["gen_ai.provider.name"] = _GENAI_PROVIDERS[run.model.provider]
        a["gen_ai.agent.name"] = agent.name
        a["gen_ai.request.model"] = run.model.name
        a["gen_ai.conversation.id"] = run.session_id
        a["user.id"] = run.user_id
        a["gen_ai.input.messages"] = _json([{"role": "user", "parts": [_text_part(question)]}])
        if answer is not None:
            a["gen_ai.output.messages"] = _json(
                [{"role": "assistant", "parts": [_text_part(answer)], "finish_reason": "stop"}]
            )

    def llm(
        self,
        s: _Span,
        run: _Run,
        agent: _Agent,
        inputs: list[dict],
        output: dict | None,
        usage: _Usage | None,
        extra_tools: list[dict],
        finish: str,
    ) -> None:
        model = run.model
        s.name, s.kind = f"chat {model.name}", CLIENT
        a = s.attrs
        a["gen_ai.operation.name"] = "chat"
        a["gen_ai.provider.name"] = _GENAI_PROVIDERS[model.provider]
        a["gen_ai.request.model"] = model.name
        a["gen_ai.request.max_tokens"] = MAX_OUTPUT_TOKENS
        a["gen_ai.request.temperature"] = 0.2
        a["server.address"] = _SERVERS[model.provider]
        a["gen_ai.agent.name"] = agent.name
        a["gen_ai.conversation.id"] = run.session_id
        a["gen_ai.system_instructions"] = _json([_text_part(inputs[0]["content"])])
        a["gen_ai.input.messages"] = _json([_parts(m) for m in inputs[1:]])
        a["gen_ai.tool.definitions"] = (
            agent.tool_definitions
            if not extra_tools
            else _json(
                [_genai_definition(TOOLS[t].schema) for t in agent.tools]
                + [_genai_definition(t) for t in extra_tools]
            )
        )
        if output is not None:
            a["gen_ai.output.messages"] = _json([{**_parts(output), "finish_reason": finish}])
        if usage is not None:
            a["gen_ai.response.model"] = model.name
            a["gen_ai.response.finish_reasons"] = [finish]
            a["gen_ai.usage.input_tokens"] = usage.prompt
            a["gen_ai.usage.output_tokens"] = usage.completion
            if usage.cached:
                a["gen_ai.usage.cache_read.input_tokens"] = usage.cached
            if usage.reasoning:
                a["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning

    def tool(self, s: _Span, run: _Run, agent: _Agent, call: _Call) -> None:
        s.name, s.kind = f"execute_tool {call.tool}", INTERNAL
        a = s.attrs
        a["gen_ai.operation.name"] = "execute_tool"
        a["gen_ai.tool.name"] = call.tool
        a["gen_ai.tool.type"] = "function"
        a["gen_ai.tool.call.id"] = call.id
        a["gen_ai.tool.call.arguments"] = _json(call.args)
        if call.error is None:
            a["gen_ai.tool.call.result"] = call.result

    def fail(self, s: _Span, what: Failing, message: str, exc: str) -> None:
        s.status, s.message = ERROR, message
        s.attrs["error.type"] = exc
        trace = _stacktrace(what, s.name, exc, message, *self.frames)
        s.events = [
            (
                "exception",
                s.end,
                {"exception.type": exc, "exception.message": message, "exception.stacktrace": trace},
            )
        ]


def _text_part(text: str) -> dict:
    return {"type": "text", "content": text}


def _parts(m: dict) -> dict:
    """An OpenAI chat message in GenAI semconv shape: a role and typed parts."""
    if m["role"] == "tool":
        return {
            "role": "tool",
            "parts": [{"type": "tool_call_response", "id": m["tool_call_id"], "response": m["content"]}],
        }
    parts = [_text_part(m["content"])] if m.get("content") else []
    parts += [
        {
            "type": "tool_call",
            "id": tc["id"],
            "name": tc["function"]["name"],
            "arguments": orjson.loads(tc["function"]["arguments"]),
        }
        for tc in m.get("tool_calls", ())
    ]
    return {"role": m["role"], "parts": parts}


@dataclass(frozen=True)
class _Service:
    name: str
    agents: tuple[str, ...]  # the entry agent first
    traffic: float
    convention: _OpenInference | _GenAI
    resource: dict
    long_span_ids: bool = False  # openai-agents span ids are 24 hex; OTLP ids are always 16


def _resource(name: str, version: str, **extra: str) -> dict:
    return {
        "service.name": name,
        "service.version": version,
        "deployment.environment": "production",
        "telemetry.sdk.language": "python",
        **extra,
    }


SERVICES = (
    _Service(
        "support-bot",
        ("SupportAgent", "RefundAgent"),
        0.30,
        _OpenInference(
            ("openai-agents-sdk", "0.14.4"),
            "both",
            {"agent": "agent.{}", "llm": "generation", "tool": "function.{}"},
            llm_kind=CLIENT,
            turn_name="custom.turn",
            non_fatal_tool_errors=True,
            exception_events=False,
            llm_tools=False,
            halo_projection="acme-support",
        ),
        {"service.name": "support-bot"},
        long_span_ids=True,
    ),
    _Service(
        "research-assistant",
        ("ResearchAgent",),
        0.20,
        _OpenInference(
            ("openinference.instrumentation.langchain", "0.1.52"),
            "flat",
            {"agent": "{}", "llm": "ChatAnthropic", "tool": "{}"},
            turn_name="agent",
            cost=True,
            frames=(f"{SITE_PACKAGES}/langchain_core/tools/base.py", "/app/research_assistant/graph.py"),
        ),
        _resource("research-assistant", "2.3.1", **{"openinference.project.name": "research"}),
    ),
    _Service(
        "billing-agent",
        ("BillingAgent",),
        0.15,
        _OpenInference(
            ("openinference.instrumentation.openai", "0.1.33"),
            "blob",
            {"agent": "{}", "llm": "ChatCompletion", "tool": "{}"},
            cost=True,
            frames=("/app/billing/tools/registry.py", "/app/billing/assistant.py"),
        ),
        _resource("billing-agent", "1.12.0"),
    ),
    _Service(
        "code-helper",
        ("CodeHelper",),
        0.20,
        _GenAI(
            ("opentelemetry.instrumentation.genai", "0.4b0"),
            (f"{SITE_PACKAGES}/google/adk/flows/llm_flows/functions.py", "/app/code_helper/agent.py"),
        ),
        _resource("code-helper", "0.9.4"),
    ),
    _Service(
        "travel-planner",
        ("TravelPlanner",),
        0.15,
        _OpenInference(
            ("openinference.instrumentation.openai_agents", "1.2.0"),
            "flat",
            {"agent": "{}", "llm": "response", "tool": "{}"},
            non_fatal_tool_errors=True,
            exception_events=False,
            finish_reason=True,
        ),
        _resource("travel-planner", "3.0.2"),
    ),
)
_SERVICE_OF = {agent: s for s in SERVICES for agent in s.agents}


# ---------------------------------------------------------------------------------------------
# Run plans: what an agent does in one trace, before it is laid out in time


@dataclass
class _Failure:
    message: str
    exc: str
    ms: float = 0.0
    backoff_ms: float = 0.0  # wait before the next attempt


@dataclass
class _Call:
    tool: str
    args: dict
    result: str
    ms: float
    id: str = ""
    error: str | None = None
    exc: str = "ToolError"
    retries: list[_Failure] = field(
        default_factory=list
    )  # failed attempts the harness retried, same arguments


@dataclass
class _Turn:
    """One model response, with the tool calls it asked for (run in parallel after it)."""

    calls: list[_Call]
    text: str | None = None
    retries: list[_Failure] = field(default_factory=list)  # failed attempts before this response
    fail: _Failure | None = None  # the response never came and the run stops here
    finish: str | None = None  # overrides "tool_calls"/"stop"
    completion_tokens: int | None = None
    prompt_extra: int = 0  # tokens in the prompt beyond what the recorded messages show


@dataclass
class _Handoff:
    target: str
    turns: list[_Turn]
    error: str | None = None


@dataclass
class _Run:
    trace_id: int
    start: int
    service: _Service
    agent: _Agent
    model: _Model
    scenario: _Scenario
    facts: dict
    lang: str
    session_id: str
    user_id: str
    question: str
    steps: list[_Turn | _Handoff] = field(default_factory=list)
    guardrail_triggered: bool | None = None  # None: the agent has no output guardrail
    error: _Failure | None = None  # the run as a whole failed
    extra_tools: list[dict] = field(default_factory=list)  # offered in this run only
    context_note: str = ""  # appended to the system prompt

    def turns(self) -> Iterator[_Turn]:
        for step in self.steps:
            yield from step.turns if isinstance(step, _Handoff) else (step,)

    def calls(self, tool: str) -> Iterator[tuple[_Turn, _Call]]:
        for turn in self.turns():
            for call in turn.calls:
                if call.tool == tool:
                    yield turn, call

    def root_index(self, turn: _Turn) -> int:
        return next(i for i, step in enumerate(self.steps) if step is turn)

    def end_with(self, after: int, text: str) -> None:
        """Drop every step after `after` and finish with a final answer."""
        del self.steps[after + 1 :]
        self.steps.append(_Turn([], text=text))

    def insert_before_answer(self, turn: _Turn) -> None:
        last = self.steps[-1]
        self.steps.insert(len(self.steps) - 1 if isinstance(last, _Turn) and not last.calls else 0, turn)


def _call_id(rng: Random, provider: str) -> str:
    bits = rng.getrandbits(96)
    return f"toolu_01{bits:022x}"[:30] if provider == "anthropic" else f"call_{bits:024x}"


def _make_call(rng: Random, run: _Run, tool: str, i: int) -> _Call:
    t = TOOLS[tool]
    ms = max(t.median_ms * rng.lognormvariate(0, 0.4), 20) if t.median_ms > 1 else rng.uniform(0.3, 2)
    return _Call(tool, t.args(run.facts, i), t.result(run.facts, i), ms, _call_id(rng, run.model.provider))


def _plan(run: _Run, rng: Random) -> None:
    """The healthy run for the scenario: its tool turns, an optional handoff, then the answer."""
    seen: dict[str, int] = {}

    def turns(spec: tuple[tuple[str, ...], ...]) -> list[_Turn]:
        out = []
        for tools in spec:
            calls = []
            for tool in tools:
                calls.append(_make_call(rng, run, tool, seen.get(tool, 0)))
                seen[tool] = seen.get(tool, 0) + 1
            out.append(_Turn(calls, text="Let me check that for you." if rng.random() < 0.15 else None))
        return out

    answer = _say(run, run.scenario.answer)
    run.steps = [*turns(run.scenario.turns)]
    if run.scenario.handoff:
        target, spec = run.scenario.handoff
        run.steps.append(_Handoff(target, [*turns(spec), _Turn([], text=answer)]))
    else:
        run.steps.append(_Turn([], text=answer))
    if run.agent.guardrail:
        run.guardrail_triggered = False


def _say(run: _Run, text: Mapping[str, str]) -> str:
    return text.get(run.lang, text["en"]).format(**run.facts)


# ---------------------------------------------------------------------------------------------
# Failure modes: each a small function that turns a healthy plan into a failing one


@dataclass(frozen=True)
class _Mode:
    category: Category
    key: str
    description: str
    plant: Callable[[_Run, Random], None]
    agents: frozenset[str] = frozenset()  # entry agents it can happen to (empty: any)
    model: str | None = None
    tool: str | None = None  # the run's scenario must call this tool
    ends_run: bool = False  # rewrites how the run ends, so two of these cannot share a trace
    template: str | None = None
    name: str = ""  # what `rates` calls it: its category unless the category has another mode

    @property
    def rate_name(self) -> str:
        return self.name or self.category

    @property
    def id(self) -> str:
        return f"{self.category}:{self.key}"

    def fits(self, agent: _Agent, model: str) -> bool:
        return (not self.agents or agent.name in self.agents) and (self.model is None or self.model == model)


def _hallucinated_tool(run: _Run, rng: Random) -> None:
    f = run.facts
    args = {"invoice_id": f["invoice_id"], "amount_cents": int(float(f["amount"]) * 100)}
    error = (
        "Unknown tool: refund_invoice. Available tools: get_invoice, list_invoices, apply_credit, "
        "update_payment_method"
    )
    call = _Call(
        "refund_invoice",
        args,
        "",
        rng.uniform(1, 4),
        _call_id(rng, run.model.provider),
        error=error,
        exc="ToolNotFoundError",
    )
    run.insert_before_answer(_Turn([call]))


def _invalid_tool_arguments(run: _Run, rng: Random) -> None:
    turn, call = next(run.calls("search_flights"))
    f, index = run.facts, run.root_index(turn)
    for _ in range(rng.choice((1, 1, 2))):
        args, problem = rng.choice(
            (
                (
                    {
                        "origin": f["origin"],
                        "destination": f["dest"],
                        "date": "next friday",
                        "cabin": "economy",
                    },
                    "departure_date\n  Field required [type=missing, input_value={args}, input_type=dict]",
                ),
                (
                    {**call.args, "departure_date": f"{f['date'][8:]}/{f['date'][5:7]}/{f['date'][:4]}"},
                    (
                        "departure_date\n  Input should be a valid date in the format YYYY-MM-DD "
                        "[type=date_from_datetime_parsing, input_value='{bad}', input_type=str]"
                    ),
                ),
                (
                    {**call.args, "cabin": "premium"},
                    (
                        "cabin\n  Input should be 'economy', 'premium_economy', 'business' or 'first' [type=enum, "
                        "input_value='premium', input_type=str]"
                    ),
                ),
            )
        )
        error = (
            "Invalid arguments for tool search_flights: 1 validation error for search_flights_args\n"
            + problem.format(args=args, bad=args.get("departure_date", ""))
        )
        bad = _Call(
            "search_flights",
            args,
            "",
            rng.uniform(1, 5),
            _call_id(rng, run.model.provider),
            error=error,
            exc="ValidationError",
        )
        run.steps.insert(index, _Turn([bad]))


def _tool_error(run: _Run, rng: Random) -> None:
    turn, call = next(run.calls("lookup_order"))
    call.error = f"Order {run.facts['order_id']} not found in region {run.facts['region']}"
    call.exc, call.result = "OrderNotFoundError", ""
    run.end_with(run.root_index(turn), _say(run, ORDER_MISSING))


def _repetition_loop(run: _Run, rng: Random) -> None:
    turn, call = next(run.calls("web_search"))
    index = run.root_index(turn)
    for _ in range(rng.randint(2, 7)):  # the original call plus 2-7 identical ones
        again = replace(call, id=_call_id(rng, run.model.provider), ms=call.ms * rng.uniform(0.8, 1.2))
        run.steps.insert(index + 1, _Turn([again]))


def _refusal(run: _Run, rng: Random) -> None:
    run.steps = [_Turn([], text=rng.choice(REFUSALS[run.lang]))]


def _max_turns(run: _Run, rng: Random) -> None:
    tools, first = ("grep", "read_file", "list_files"), rng.randrange(3)
    run.steps = [_Turn([_make_call(rng, run, tools[(first + n) % 3], n)]) for n in range(MAX_TURNS)]
    run.error = _Failure(f"Max turns ({MAX_TURNS}) exceeded", "MaxTurnsExceeded")


def _timeout(run: _Run, rng: Random) -> None:
    _, call = next(run.calls("fetch_url"))
    call.ms = 30_000 + rng.uniform(2, 60)
    call.error, call.exc = f"timed out after 30s fetching {call.args['url']}", "httpx.ReadTimeout"
    call.result = ""


def _rate_limit(run: _Run, rng: Random) -> None:
    turn = rng.choice([t for t in run.turns() if t.fail is None])
    turn.retries = [
        _Failure(
            "Error code: 429 - {'type': 'error', 'error': {'type': 'rate_limit_error', 'message': 'This "
            "request would exceed the rate limit for your organization of 400,000 input tokens per "
            f"minute. Please retry later.'}}, 'request_id': 'req_011C{rng.getrandbits(80):020x}'}}",
            "anthropic.RateLimitError",
            rng.uniform(120, 600),
            1000 * 2**n * rng.uniform(0.8, 1.25),
        )
        for n in range(rng.randint(2, 5))
    ]


def _latency(run: _Run, rng: Random) -> None:
    for _, call in run.calls("search_hotels"):
        call.ms = min(max(12_000 * rng.lognormvariate(0, 0.35), 6_000), 28_000)


def _bottleneck(run: _Run, rng: Random) -> None:
    call = _make_call(rng, run, "index_repository", 0)
    call.ms = min(max(call.ms * rng.lognormvariate(0, 0.15), 15_000), 40_000)
    run.steps.insert(0, _Turn([call]))


def _tool_rate_limit(run: _Run, rng: Random) -> None:
    _, call = next(run.calls("get_weather"))
    call.retries = [
        _Failure(
            "HTTP 429 Too Many Requests from api.weatherapi.example: rate limit of 60 requests per minute "
            "exceeded",
            "httpx.HTTPStatusError",
            rng.uniform(40, 120),
            1000 * 2**n * rng.uniform(0.8, 1.25),
        )
        for n in range(rng.randint(2, 4))
    ]


def _cost(run: _Run, rng: Random) -> None:
    invoices = rng.randint(900, 3_000)
    run.context_note = (
        f'\n\n<billing_history customer="{run.facts["customer_id"]}">\n'
        f"[{invoices:,} invoices, {invoices * 140:,} characters; truncated by the exporter]\n"
        "</billing_history>"
    )
    for turn in run.turns():
        turn.prompt_extra = invoices * 45 + rng.randint(0, 4_000)


def _context_overflow(run: _Run, rng: Random) -> None:
    turn = next(
        step
        for step in reversed(run.steps)
        if isinstance(step, _Turn) and step.calls and not step.calls[0].tool.startswith("transfer_to_")
    )
    call = turn.calls[-1]
    call.result = f"{call.result}\n…[{rng.randint(600_000, 1_400_000):,} characters truncated]"
    window = run.model.context_window
    failure = _Failure(
        f"Error code: 400 - {{'error': {{'message': \"This model's maximum context length is {window} "
        f"tokens. However, your messages resulted in {window + rng.randint(2_000, 120_000)} tokens. Please "
        "reduce the length of the messages.\", 'type': 'invalid_request_error', 'param': 'messages', "
        "'code': 'context_length_exceeded'}}",
        "openai.BadRequestError",
        rng.uniform(150, 700),
    )
    del run.steps[run.root_index(turn) + 1 :]
    run.steps.append(_Turn([], fail=failure))
    run.error = failure


def _empty_or_truncated_output(run: _Run, rng: Random) -> None:
    final = run.steps[-1]
    assert isinstance(final, _Turn)  # a run ends with its answer
    final.finish, final.completion_tokens = "length", MAX_OUTPUT_TOKENS
    text = final.text or ""
    if rng.random() < 0.4:  # thinking used the whole output budget
        final.text = ""
    else:
        final.text = text[: rng.randint(len(text) // 3, 2 * len(text) // 3)]


def _guardrail(run: _Run, rng: Random) -> None:
    f = run.facts
    leak = (
        f"Sure! The account {f['email']} is paid with the Visa 4539 1488 0343 {f['card']}, "
        f"expiry 0{rng.randint(1, 9)}/2{rng.randint(7, 9)}."
    )
    run.steps = [_Turn([], text=leak)]
    run.guardrail_triggered = True
    run.error = _Failure(
        "Output guardrail tripwire triggered: pii_filter", "OutputGuardrailTripwireTriggered"
    )


def _handoff(run: _Run, rng: Random) -> None:
    index, handoff = next((i, s) for i, s in enumerate(run.steps) if isinstance(s, _Handoff))
    handoff.turns = []
    handoff.error = (
        f"Handoff to RefundAgent failed: RefundRequest validation error for order "
        f"{run.facts['order_id']}: field 'reason' is required"
    )
    run.end_with(index, _say(run, TRANSFER_FAILED))


MODES: tuple[_Mode, ...] = (
    _Mode(
        "tool_error",
        "lookup_order",
        "SupportAgent's lookup_order fails for orders it cannot find, then the agent asks the customer to "
        "re-check the number.",
        _tool_error,
        frozenset({"SupportAgent"}),
        tool="lookup_order",
        ends_run=True,
        template="Order <order_id> not found in region <region>",
    ),
    _Mode(
        "rate_limit",
        "claude-sonnet-4-5",
        "Anthropic 429 rate_limit_error storms: 2-5 failed claude-sonnet-4-5 calls with exponential "
        "backoff before one succeeds.",
        _rate_limit,
        model="claude-sonnet-4-5",
        template="Error code: 429 - {'type': 'error', 'error': {'type': 'rate_limit_error', ...}}",
    ),
    _Mode(
        "latency",
        "search_hotels",
        "TravelPlanner's search_hotels takes 6-28 s (other tools: about 2 s at most); it succeeds but "
        "dominates the run.",
        _latency,
        frozenset({"TravelPlanner"}),
        tool="search_hotels",
    ),
    _Mode(
        "invalid_tool_arguments",
        "search_flights",
        "The model calls search_flights with arguments that fail schema validation (missing "
        "departure_date, wrong date format, bad cabin enum), then retries.",
        _invalid_tool_arguments,
        frozenset({"TravelPlanner"}),
        tool="search_flights",
        template="Invalid arguments for tool search_flights: 1 validation error for search_flights_args ...",
    ),
    _Mode(
        "hallucinated_tool",
        "refund_invoice",
        "BillingAgent's model calls refund_invoice, a tool it was never offered; the call fails with "
        "'Unknown tool'.",
        _hallucinated_tool,
        frozenset({"BillingAgent"}),
        template="Unknown tool: refund_invoice. Available tools: ...",
    ),
    _Mode(
        "refusal",
        "SupportAgent",
        "SupportAgent refuses ordinary support requests, in the customer's language (en/es/fr/de), without "
        "calling any tool.",
        _refusal,
        frozenset({"SupportAgent"}),
        ends_run=True,
    ),
    _Mode(
        "timeout",
        "fetch_url",
        "ResearchAgent's fetch_url hangs for 30 s and fails with httpx.ReadTimeout.",
        _timeout,
        frozenset({"ResearchAgent"}),
        tool="fetch_url",
        template="timed out after 30s fetching <url>",
    ),
    _Mode(
        "repetition_loop",
        "web_search",
        "ResearchAgent repeats the identical web_search call (same arguments) 3-8 times in one run.",
        _repetition_loop,
        frozenset({"ResearchAgent"}),
        tool="web_search",
    ),
    _Mode(
        "empty_or_truncated_output",
        "gemini-3-flash",
        "gemini-3-flash final answers hit the output-token limit (finish_reason length): empty or cut off "
        "mid-sentence.",
        _empty_or_truncated_output,
        model="gemini-3-flash",
        ends_run=True,
    ),
    _Mode(
        "max_turns",
        "CodeHelper",
        f"CodeHelper keeps searching and reading files and never answers: 'Max turns ({MAX_TURNS}) "
        "exceeded'.",
        _max_turns,
        frozenset({"CodeHelper"}),
        ends_run=True,
        template=f"Max turns ({MAX_TURNS}) exceeded",
    ),
    _Mode(
        "cost",
        "BillingAgent",
        "BillingAgent puts the customer's whole billing history in every prompt: 40k-140k prompt tokens "
        "per call instead of ~1-3k.",
        _cost,
        frozenset({"BillingAgent"}),
    ),
    _Mode(
        "context_overflow",
        "gpt-5.4-mini",
        "A huge tool result pushes gpt-5.4-mini past its context window; the next call fails with "
        "context_length_exceeded and the run stops.",
        _context_overflow,
        model="gpt-5.4-mini",
        ends_run=True,
        template="Error code: 400 - ... maximum context length is <n> tokens ... 'context_length_exceeded'",
    ),
    _Mode(
        "guardrail",
        "pii_filter",
        "SupportAgent's answer leaks card and email details; the pii_filter output guardrail trips and "
        "the run fails.",
        _guardrail,
        frozenset({"SupportAgent"}),
        ends_run=True,
        template="Output guardrail tripwire triggered: pii_filter",
    ),
    _Mode(
        "latency",
        "index_repository",
        "CodeHelper starts every run it is used in by building the code index: 15-40 s every time (not "
        "now and then), most of the run.",
        _bottleneck,
        frozenset({"CodeHelper"}),
        name="bottleneck",
    ),
    _Mode(
        "rate_limit",
        "get_weather",
        "TravelPlanner's weather API answers 429 to 2-4 attempts of a get_weather call; the harness "
        "retries with identical arguments and backoff until one succeeds.",
        _tool_rate_limit,
        frozenset({"TravelPlanner"}),
        tool="get_weather",
        template="HTTP 429 Too Many Requests from api.weatherapi.example: rate limit of <n> requests per "
        "minute exceeded",
        name="tool_rate_limit",
    ),
    _Mode(
        "handoff",
        "RefundAgent",
        "SupportAgent's handoff to RefundAgent fails validation, so refund requests are never processed.",
        _handoff,
        frozenset({"SupportAgent"}),
        tool="transfer_to_refund_agent",
        ends_run=True,
        template="Handoff to RefundAgent failed: RefundRequest validation error for order <order_id>: "
        "field 'reason' is required",
    ),
)
assert sorted(m.rate_name for m in MODES) == sorted(DEFAULT_RATES), "every mode needs a rate"


# ---------------------------------------------------------------------------------------------
# One-off distractors: unique tools failing with unique errors, never to be reported as systemic

_ONE_OFF_VERBS = (
    "export",
    "import",
    "sync",
    "resize",
    "translate",
    "archive",
    "render",
    "validate",
    "merge",
    "compress",
    "encrypt",
    "schedule",
    "transcode",
    "index",
    "reconcile",
    "geocode",
    "snapshot",
    "rotate",
    "migrate",
    "classify",
    "dedupe",
    "annotate",
    "publish",
    "unlock",
    "backfill",
    "scan",
)
_ONE_OFF_NOUNS = (
    "calendar",
    "spreadsheet",
    "thumbnail",
    "webhook",
    "ledger",
    "playlist",
    "sitemap",
    "barcode",
    "avatar",
    "changelog",
    "manifest",
    "certificate",
    "backup",
    "glossary",
    "receipt",
    "floorplan",
    "transcript",
    "subtitle",
    "contact_card",
    "heatmap",
    "sku_feed",
    "voucher",
    "waitlist",
    "roster",
    "timesheet",
    "warranty",
    "mailbox",
    "dns_record",
    "firewall_rule",
    "crontab",
    "license_key",
    "qr_code",
    "font_cache",
    "shipping_label",
    "tax_form",
    "audit_log",
)

# Each message names its tool as a bare word: detectors mask numbers, paths, ids and quoted values to
# find templates, and the tool name is what must keep every one-off template distinct after that.
_ONE_OFF_ERRORS = (
    ("PermissionError", "[Errno 13] Permission denied while {tool} opened '/var/lib/jobs/{n}.lock'"),
    ("UnicodeDecodeError", "'utf-8' codec can't decode byte 0x{b:02x} in position {n} of the {tool} input"),
    ("ssl.SSLCertVerificationError", "certificate verify failed for the {tool} upstream: cert expired"),
    ("psycopg.errors.UniqueViolation", "duplicate key value violates unique constraint on {tool} (id={n})"),
    ("json.JSONDecodeError", "{tool} got invalid JSON: Expecting ',' delimiter: line {b} column {n}"),
    ("botocore.exceptions.ClientError", "An error occurred (AccessDenied) when {tool} called GetObject"),
    ("ZeroDivisionError", "float division by zero while computing the {tool} ratio"),
    ("FileNotFoundError", "[Errno 2] No such file or directory for {tool}: '/tmp/out-{n}.csv'"),
    ("redis.exceptions.ConnectionError", "Error 111 connecting to the {tool} cache. Connection refused."),
    ("ValueError", "could not convert string to float in {tool}: 'n/a'"),
    ("IndexError", "list index out of range at row {n} of the {tool} sheet"),
    ("OverflowError", "date value out of range in {tool} (year {n})"),
    ("RecursionError", "maximum recursion depth exceeded while resolving {tool} references"),
    ("MemoryError", "unable to allocate {n} MiB for the {tool} buffer"),
    ("ConnectionResetError", "[Errno 104] Connection reset by peer during {tool}"),
    ("AttributeError", "'NoneType' object has no attribute 'items' (in {tool})"),
    ("TypeError", "{tool}() got an unexpected keyword argument 'overwrite'"),
    ("sqlite3.OperationalError", "database is locked; {tool} gave up after {b} attempts"),
    ("grpc.RpcError", "StatusCode.UNAVAILABLE: {tool} endpoint not ready after {b} probes"),
    ("xml.etree.ElementTree.ParseError", "mismatched tag in the {tool} feed: line {b}, column {n}"),
    ("zipfile.BadZipFile", "File is not a zip file ({tool} export {n})"),
    ("PIL.UnidentifiedImageError", "cannot identify image file for {tool}: upload {n}"),
    ("smtplib.SMTPRecipientsRefused", "{tool} notification refused: 550 5.1.1 mailbox unavailable"),
    ("yaml.scanner.ScannerError", "mapping values are not allowed here in the {tool} config, line {b}"),
    ("ModuleNotFoundError", "No module named 'pyarrow' (needed by {tool})"),
    ("BrokenPipeError", "[Errno 32] Broken pipe while streaming {tool} chunk {n}"),
    ("LookupError", "unknown encoding for {tool}: cp{m}"),
    ("KeyError", "{tool} settings missing from tenant config v{b}"),
    ("asyncio.CancelledError", "{tool} worker cancelled during shutdown"),
    ("OSError", "[Errno 28] No space left on device while {tool} wrote '/data/spool/{n}'"),
)
# Once every verb_noun pair is used, names get a word rather than a number, since detectors mask numbers.
_ONE_OFF_SUFFIXES = (
    "",
    "_legacy",
    "_beta",
    "_bulk",
    "_nightly",
    "_async",
    "_remote",
    "_batch",
    "_draft",
    "_mirror",
    "_shadow",
)


class _OneOffs:
    """Hands out tool names and error messages that are never used twice in a corpus.

    Every chunk shuffles the same pools (seeded by the corpus seed) and takes the slots
    `j * chunks + index`, so chunks never collide and the first slots go first.
    """

    def __init__(self, seed: int, index: int, chunks: int):
        rng = Random(f"{seed}:one-offs")
        self.names = [f"{v}_{n}" for v, n in product(_ONE_OFF_VERBS, _ONE_OFF_NOUNS)]
        rng.shuffle(self.names)
        self.errors = list(_ONE_OFF_ERRORS)
        rng.shuffle(self.errors)
        self.index, self.chunks, self.used = index, chunks, 0

    def next(self, rng: Random) -> tuple[str, str, str]:
        """(tool, exception type, message) for the next distractor."""
        slot = self.used * self.chunks + self.index
        self.used += 1
        lap, i = divmod(slot, len(self.names))
        suffix = _ONE_OFF_SUFFIXES[lap] if lap < len(_ONE_OFF_SUFFIXES) else f"_v{lap}"
        tool = self.names[i] + suffix
        exc, template = self.errors[slot % len(self.errors)]
        message = template.format(
            tool=tool, n=rng.randint(2, 9_999), m=rng.randint(1_250, 1_259), b=rng.randint(1, 255)
        )
        return tool, exc, message

    def plant(self, run: _Run, rng: Random) -> None:
        tool, exc, message = self.next(rng)
        call = _Call(
            tool,
            {"id": f"{tool.split('_', 1)[1]}-{rng.randint(1, 999)}"},
            "",
            rng.uniform(30, 900),
            _call_id(rng, run.model.provider),
            error=message,
            exc=exc,
        )
        parameters = {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}
        description = f"{tool.replace('_', ' ').capitalize()}."
        function = {"name": tool, "description": description, "parameters": parameters}
        run.extra_tools.append({"type": "function", "function": function})
        run.insert_before_answer(_Turn([call]))


# ---------------------------------------------------------------------------------------------
# Recording: lay a plan out in time as spans, in the order an exporter writes them


class _Recorder:
    """Walks one run's plan with a clock, keeping the conversation the model sees at each call."""

    def __init__(self, run: _Run, rng: Random):
        self.run, self.rng = run, rng
        self.conv: Any = run.service.convention  # each convention writes the spans it has
        self.now = run.start
        self.spans: list[_Span] = []  # in the order they end
        self.history: list[dict] = []  # OpenAI chat messages, system first
        self.history_chars = 0
        self.last_prompt = 0

    def record(self) -> list[_Span]:
        run = self.run
        root = self._open(None)
        self._wait(1, 6)
        answer = self._agent_turns(run.agent, run.steps, root)
        if run.guardrail_triggered is not None:
            g = self._open(root)
            self._wait(2, 40)
            self.conv.guardrail(g, run, run.agent, run.agent.guardrail, run.guardrail_triggered)
            self._close(g)
        self._wait(1, 5)
        self.conv.agent(root, run, run.agent, run.question, None if run.error else answer)
        self._close(root, ("agent", run.error.message, run.error.exc) if run.error else None)
        return self.spans

    def _agent_turns(self, agent: _Agent, steps: Sequence[_Turn | _Handoff], parent: _Span) -> str | None:
        run, answer = self.run, None
        self._set_system(agent.instructions + (run.context_note if agent is run.agent else ""))
        if len(self.history) == 1:
            self._remember({"role": "user", "content": run.question})
        extra_tools = run.extra_tools if agent is run.agent else []
        for n, step in enumerate(steps, 1):
            if isinstance(step, _Handoff):
                answer = self._handoff(agent, step, parent)
                continue
            self._turn(agent, step, n, extra_tools, parent)
            if step.fail:
                break
            answer = step.text if not step.calls else answer
        return answer

    def _turn(self, agent: _Agent, turn: _Turn, n: int, extra_tools: list[dict], parent: _Span) -> None:
        chain = self._open(parent) if self.conv.turn_name else None
        usage = self._respond(agent, turn, extra_tools, chain or parent)
        if chain:
            self.conv.turn(chain, self.run, agent, n, usage or _Usage(0, 0))
            # a failed model call fails its turn too: the exception passes through
            self._close(chain, ("llm", turn.fail.message, turn.fail.exc) if turn.fail else None)

    def _respond(self, agent: _Agent, turn: _Turn, extra_tools: list[dict], parent: _Span) -> _Usage | None:
        """The model calls of one turn (failed attempts, then the answer) and the tools it asked for."""
        conv, run, rng = self.conv, self.run, self.rng
        for failure in [*turn.retries, *([turn.fail] if turn.fail else [])]:
            s = self._open(parent)
            self.now += int(failure.ms * 1e6)
            conv.llm(s, run, agent, self.history, None, None, extra_tools, "error")
            self._close(s, ("llm", failure.message, failure.exc))
            self.now += int(failure.backoff_ms * 1e6)
        if turn.fail:
            return None
        s = self._open(parent)
        message: dict = {"role": "assistant", "content": turn.text}
        if turn.calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.tool, "arguments": _json(c.args)}}
                for c in turn.calls
            ]
        usage = self._usage(turn, message, len(agent.tools) + len(extra_tools))
        model = run.model
        seconds = (
            model.first_token_s * rng.uniform(0.7, 1.5)
            + usage.completion * model.ms_per_token / 1000
            + usage.prompt / 60_000
        )  # prefill: huge prompts are slow too
        self.now += int(min(max(seconds * rng.lognormvariate(0, 0.15), 0.4), 6 + usage.prompt / 30_000) * 1e9)
        conv.llm(
            s,
            run,
            agent,
            self.history,
            message,
            usage,
            extra_tools,
            turn.finish or ("tool_calls" if turn.calls else "stop"),
        )
        self._close(s)
        self._remember(message)
        self._tools(agent, turn.calls, parent)
        return usage

    def _tools(self, agent: _Agent, calls: list[_Call], parent: _Span) -> None:
        """Parallel tool calls start together and are written as each one finishes."""
        start, running = self.now, []
        for call in calls:
            if call.tool.startswith("transfer_to_"):  # a handoff, recorded as its own span next
                self._remember({"role": "tool", "tool_call_id": call.id, "content": call.result})
                continue
            self.now = start + int(self.rng.uniform(0.2, 3) * 1e6)
            for failure in call.retries:  # each failed attempt, then the backoff, then the next
                s = self._open(parent)
                s.end = s.start + int(failure.ms * 1e6)
                running.append((s, replace(call, error=failure.message, exc=failure.exc, retries=[]), False))
                self.now = s.end + int(failure.backoff_ms * 1e6)
            s = self._open(parent)
            s.end = s.start + int(call.ms * 1e6)
            running.append((s, call, True))
        for s, call, answered in sorted(running, key=lambda sc: sc[0].end):
            self.conv.tool(s, self.run, agent, call)
            self._close(s, ("tool", call.error, call.exc) if call.error else None, at=s.end)
            if answered:  # the model sees the last attempt's result only
                self._remember(
                    {"role": "tool", "tool_call_id": call.id, "content": call.error or call.result}
                )
        self.now = max([start, *(s.end for s, _, _ in running)]) + int(self.rng.uniform(0.5, 4) * 1e6)

    def _handoff(self, source: _Agent, handoff: _Handoff, parent: _Span) -> str | None:
        s = self._open(parent)
        self._wait(1, 4)
        self.conv.handoff(s, self.run, source, handoff.target)
        self._close(s, ("handoff", handoff.error, "HandoffError") if handoff.error else None)
        if handoff.error:
            return None
        target = AGENTS[handoff.target]
        sub = self._open(parent)
        self._wait(1, 4)
        answer = self._agent_turns(target, handoff.turns, sub)
        self.conv.agent(sub, self.run, target, self.run.question, answer)
        self._close(sub)
        return answer

    def _usage(self, turn: _Turn, message: dict, tool_count: int) -> _Usage:
        model, rng = self.run.model, self.rng
        # ~900 tokens of instructions and examples the recorded system message does not show
        prompt = (
            900 + (self.history_chars + 180 * tool_count) // 4 + 12 * len(self.history) + turn.prompt_extra
        )
        visible = len(message["content"] or "") + sum(
            len(tc["function"]["arguments"]) + 20 for tc in message.get("tool_calls", ())
        )
        reasoning = rng.randint(16, 360) if model.reasoning else 0
        completion = turn.completion_tokens or visible // 4 + 6 + reasoning
        if turn.completion_tokens:
            reasoning = completion - visible // 4
        cached = (min(self.last_prompt, prompt) // 128) * 128 if model.provider == "openai" else 0
        self.last_prompt = prompt
        cost = round((prompt * model.usd_per_mtok_in + completion * model.usd_per_mtok_out) / 1e6, 6)
        return _Usage(prompt, completion, cached, reasoning, cost)

    def _set_system(self, text: str) -> None:
        """A handoff swaps the instructions but keeps the conversation."""
        if self.history:
            self.history_chars -= len(self.history[0]["content"])
            self.history[0] = {"role": "system", "content": text}
        else:
            self.history.append({"role": "system", "content": text})
        self.history_chars += len(text)

    def _remember(self, message: dict) -> None:
        self.history.append(message)
        calls = message.get("tool_calls", ())
        self.history_chars += len(message.get("content") or "") + sum(
            len(c["function"]["arguments"]) + 40 for c in calls
        )

    def _wait(self, low_ms: float, high_ms: float) -> None:
        self.now += int(self.rng.uniform(low_ms, high_ms) * 1e6)

    def _open(self, parent: _Span | None) -> _Span:
        return _Span(self.rng.getrandbits(96), parent.span_id if parent else None, self.now)

    def _close(self, s: _Span, error: tuple[Failing, str, str] | None = None, at: int | None = None) -> None:
        s.end = self.now if at is None else at
        if error:
            self.conv.fail(s, *error)
        else:
            s.status = self.conv.ok
        self.spans.append(s)


# ---------------------------------------------------------------------------------------------
# Output formats

_KIND_NAMES = {INTERNAL: "SPAN_KIND_INTERNAL", CLIENT: "SPAN_KIND_CLIENT"}
_STATUS_NAMES = {UNSET: "STATUS_CODE_UNSET", OK: "STATUS_CODE_OK", ERROR: "STATUS_CODE_ERROR"}
_LOW64 = (1 << 64) - 1
_SECONDS: dict[int, str] = {}  # formatting the date part is the slow bit, and spans share seconds


def _iso(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    head = _SECONDS.get(seconds)
    if head is None:
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
        head = _SECONDS[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{head}.{frac:09d}Z"


def _halo_lines(trace_id: str, service: _Service, spans: list[_Span]) -> bytes:
    """HALO's flat JSONL: the twelve keys of its span record, plus `events` only when there are any."""
    width = 24 if service.long_span_ids else 16
    mask = (1 << (4 * width)) - 1
    name, version = service.convention.scope
    resource, scope = {"attributes": service.resource}, {"name": name, "version": version}
    lines = []
    for s in spans:
        line: dict[str, Any] = {
            "trace_id": trace_id,
            "span_id": f"{s.span_id & mask:0{width}x}",
            "parent_span_id": "" if s.parent_id is None else f"{s.parent_id & mask:0{width}x}",
            "trace_state": "",
            "name": s.name,
            "kind": _KIND_NAMES[s.kind],
            "start_time": _iso(s.start),
            "end_time": _iso(s.end),
            "status": {"code": _STATUS_NAMES[s.status], "message": s.message},
            "resource": resource,
            "scope": scope,
            "attributes": s.attrs,
        }
        if s.events:
            line["events"] = [
                {"name": n, "timestamp": _iso(at), "attributes": attrs} for n, at, attrs in s.events
            ]
        lines.append(orjson.dumps(line))
    return b"\n".join(lines) + b"\n"


def _any_value(v: object) -> dict:
    if isinstance(v, str):
        return {"stringValue": v}
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    assert isinstance(v, list | tuple), v
    return {"arrayValue": {"values": [_any_value(x) for x in v]}}


def _key_values(attrs: dict) -> list[dict]:
    return [{"key": k, "value": _any_value(v)} for k, v in attrs.items() if v is not None]  # OTLP has no null


def _otlp_line(trace_id: str, service: _Service, spans: list[_Span]) -> bytes:
    """One OTLP/JSON `TracesData` per trace: camelCase, hex ids, int enums, 64-bit ints as strings."""
    out = []
    for s in spans:
        span = {
            "traceId": trace_id,
            "spanId": f"{s.span_id & _LOW64:016x}",
            "parentSpanId": "" if s.parent_id is None else f"{s.parent_id & _LOW64:016x}",
            "name": s.name,
            "kind": s.kind,
            "startTimeUnixNano": str(s.start),
            "endTimeUnixNano": str(s.end),
            "attributes": _key_values(s.attrs),
        }
        if s.events:
            span["events"] = [
                {"timeUnixNano": str(at), "name": n, "attributes": _key_values(attrs)}
                for n, at, attrs in s.events
            ]
        span["status"] = {"code": s.status, "message": s.message} if s.message else {"code": s.status}
        out.append(span)
    name, version = service.convention.scope
    return (
        orjson.dumps(
            {
                "resourceSpans": [
                    {
                        "resource": {"attributes": _key_values(service.resource)},
                        "scopeSpans": [{"scope": {"name": name, "version": version}, "spans": out}],
                    }
                ]
            }
        )
        + b"\n"
    )


# ---------------------------------------------------------------------------------------------
# The corpus: who sends what, when, and which traces carry which pattern

CHUNK_TRACES = 1_000  # the unit of generation, and of parallel work
MAX_WORKERS = 4


@dataclass
class _Session:
    id: str
    user: str
    lang: str
    left: int  # traces still to come in this session


class _Traffic:
    """Draws each trace's profile (agent + model), session and planted modes, for one chunk."""

    def __init__(
        self, rng: Random, seed: int, traces: int, rates: Mapping[str, float], distractor_rate: float
    ):
        self.rng, self.seed = rng, seed
        self.modes = [(m, rates.get(m.rate_name, 0.0)) for m in MODES]
        self.owed = {m.id: 0 for m in MODES}  # planted on a later trace when the drawn one could not take it
        self.distractor_rate, self.distractors_owed = distractor_rate, 0
        self.profiles = [
            (AGENTS[s.agents[0]], MODELS[model], s.traffic * share)
            for s in SERVICES
            for model, share in AGENTS[s.agents[0]].models
        ]
        self.sessions: dict[str, _Session] = {}
        self.population = max(50, traces // 8)  # users per service

    def pick_modes(self) -> tuple[list[_Mode], list[tuple[_Agent, _Model, float]]]:
        """The modes this trace carries, and the profiles that can carry all of them."""
        chosen: list[_Mode] = []
        profiles = self.profiles
        for mode, rate in self.modes:
            drawn = rate > 0 and self.rng.random() < rate
            if not (drawn or self.owed[mode.id]):
                continue
            fitting = [
                p
                for p in profiles
                if mode.fits(p[0], p[1].name)
                and (mode.tool is None or any(_scenario_fits(sc, [*chosen, mode]) for sc in p[0].scenarios))
            ]
            clash = mode.ends_run and any(m.ends_run for m in chosen)
            if fitting and not clash:
                chosen.append(mode)
                profiles = fitting
                self.owed[mode.id] -= not drawn
            elif drawn:
                self.owed[mode.id] += 1
        return chosen, profiles

    def distractor(self, planted: bool) -> bool:
        """Distractors go to otherwise healthy traces, so their errors stand alone."""
        drawn = self.rng.random() < self.distractor_rate
        if planted:
            self.distractors_owed += drawn
            return False
        if drawn or self.distractors_owed:
            self.distractors_owed -= not drawn
            return True
        return False

    def session(self, service: _Service) -> _Session:
        rng, current = self.rng, self.sessions.get(service.name)
        if current and current.left > 0:
            current.left -= 1
            return current
        # Users come from a fixed population, skewed so some return often. Their ids derive from the
        # seed alone, so the same user shows up across chunks.
        k = int(self.population * rng.random() ** 1.3)
        digest = hashlib.blake2b(f"{self.seed}:{service.name}:{k}".encode(), digest_size=8).digest()
        lang = "en" if service.name != "support-bot" else LANGS[sum(digest[6] >= c for c in (164, 205, 230))]
        b = rng.getrandbits(128)
        uuid = (
            f"{b >> 96:08x}-{(b >> 80) & 0xFFFF:04x}-4{(b >> 68) & 0xFFF:03x}-a{(b >> 56) & 0xFFF:03x}-"
            f"{b & (2**48 - 1):012x}"
        )
        more = min(int(rng.expovariate(0.7)), 7)  # most sessions are one or two traces
        self.sessions[service.name] = current = _Session(uuid, f"usr_{digest[:6].hex()}", lang, more)
        return current


def _scenario_fits(scenario: _Scenario, modes: list[_Mode]) -> bool:
    return all(m.tool is None or m.tool in scenario.tools for m in modes)


def _runs(
    count: int, start: int, mean_gap: float, rng: Random, traffic: _Traffic, one_offs: _OneOffs
) -> Iterator[tuple[_Run, list[_Mode], bool]]:
    for _ in range(count):
        start += int(rng.expovariate(1 / mean_gap))
        modes, profiles = traffic.pick_modes()
        agent, model, _ = rng.choices(profiles, [p[2] for p in profiles])[0]
        service = _SERVICE_OF[agent.name]
        session = traffic.session(service)
        fitting = [sc for sc in agent.scenarios if _scenario_fits(sc, modes)]
        scenario = rng.choice([sc for sc in fitting if session.lang in sc.ask] or fitting)
        lang = session.lang if session.lang in scenario.ask else "en"
        facts = _facts(rng)
        run = _Run(
            rng.getrandbits(128),
            start,
            service,
            agent,
            model,
            scenario,
            facts,
            lang,
            session.id,
            session.user,
            scenario.ask[lang].format(**facts),
        )
        _plan(run, rng)
        # the ending first, then what happens on the way there
        for mode in sorted(modes, key=lambda m: not m.ends_run):
            mode.plant(run, rng)
        distractor = traffic.distractor(bool(modes))
        if distractor:
            one_offs.plant(run, rng)
        yield run, modes, distractor


@dataclass
class _Chunk:
    data: bytes = b""
    spans: int = 0
    healthy: int = 0
    affected: dict[str, list[str]] = field(default_factory=dict)
    distractors: list[str] = field(default_factory=list)


def _chunk(
    seed: int,
    index: int,
    chunks: int,
    traces: int,
    format: str,
    compress: bool,
    rates: Mapping[str, float],
    distractor_rate: float,
) -> _Chunk:
    """Generate, render and maybe compress one chunk of the corpus: a pure function of its arguments.

    A compressed chunk is a whole gzip member; concatenated members are one valid gzip file
    (RFC 1952) that reads back as one stream, so compression runs in parallel too.
    """
    rng = Random(f"{seed}:{index}")
    count = min(CHUNK_TRACES, traces - index * CHUNK_TRACES)
    mean_gap = CORPUS_SPAN_NS / traces
    traffic = _Traffic(rng, seed, traces, rates, distractor_rate)
    render = _halo_lines if format == "halo" else _otlp_line
    parts, result = [], _Chunk()
    for run, modes, distractor in _runs(
        count,
        BASE_TIME_NS + int(index * CHUNK_TRACES * mean_gap),
        mean_gap,
        rng,
        traffic,
        _OneOffs(seed, index, chunks),
    ):
        trace_id = f"{run.trace_id:032x}"
        spans = _Recorder(run, rng).record()
        parts.append(render(trace_id, run.service, spans))
        result.spans += len(spans)
        for mode in modes:
            result.affected.setdefault(mode.id, []).append(trace_id)
        if distractor:
            result.distractors.append(trace_id)
        result.healthy += not modes and not distractor
    result.data = b"".join(parts)
    if compress:  # mtime=0 keeps the member header, and so the file, the same on every run
        result.data = gzip.compress(result.data, compresslevel=4, mtime=0)
    return result


def _chunks(
    seed: int, traces: int, format: str, compress: bool, rates: Mapping[str, float], distractor_rate: float
) -> Iterator[_Chunk]:
    """The chunks in corpus order, made on several processes when there are several chunks."""
    chunks = -(-traces // CHUNK_TRACES)
    jobs = [(seed, i, chunks, traces, format, compress, rates, distractor_rate) for i in range(chunks)]
    workers = min(MAX_WORKERS, os.cpu_count() or 1, chunks)
    # fork starts workers at once and never re-imports the caller's __main__ (spawn would, and breaks
    # unguarded scripts); where it is missing, or inside a daemon worker, generate in this process.
    if workers <= 1 or sys.platform != "linux" or multiprocessing.current_process().daemon:
        yield from (_chunk(*job) for job in jobs)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        pending: deque = deque()
        for job in jobs:
            pending.append(pool.submit(_chunk, *job))
            if len(pending) > 2 * workers:  # bounded, so a slow disk never lets chunks pile up in memory
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _truth_path(out: Path) -> Path:
    name = out.name.removesuffix(".gz").removesuffix(".jsonl")
    return out.with_name(f"{name}.truth.json")


def _context(mode: _Mode) -> dict[str, str]:
    agents = sorted(mode.agents) or sorted(
        a.name for a in AGENTS.values() if a.scenarios and any(m == mode.model for m, _ in a.models)
    )
    context = {
        "services": ", ".join(sorted({_SERVICE_OF[a].name for a in agents})),
        "agents": ", ".join(agents),
    }
    if mode.model:
        context["model"] = mode.model
    if mode.tool:
        context["tool"] = mode.tool
    return context


def simulate(
    out: Path | str,
    *,
    traces: int = 500,
    seed: int = 7,
    format: Literal["halo", "otlp"] = "halo",
    compress: bool | None = None,
    rates: Mapping[str, float] | None = None,
    distractors: float = DEFAULT_DISTRACTOR_RATE,
) -> GroundTruth:
    """Write `traces` simulated agent traces to `out` and the ground truth next to it.

    `rates` overrides `DEFAULT_RATES` per pattern name (0 turns a pattern off); `distractors` is the share of
    traces carrying a unique one-off error. `compress` defaults to "does `out` end with .gz".
    """
    out = Path(out)
    compress = out.name.endswith(".gz") if compress is None else compress
    unknown = set(rates or ()) - set(DEFAULT_RATES)
    if unknown:
        raise ValueError(f"unknown failure patterns: {sorted(unknown)} (known: {', '.join(DEFAULT_RATES)})")
    if format not in ("halo", "otlp"):
        raise ValueError(f"format must be 'halo' or 'otlp', not {format!r}")
    if traces < 1:
        raise ValueError("traces must be at least 1")
    rates = {**{str(category): rate for category, rate in DEFAULT_RATES.items()}, **(rates or {})}
    affected: dict[str, list[str]] = {m.id: [] for m in MODES}
    distractor_ids: list[str] = []
    spans = healthy = 0
    with open(out, "wb") as sink:
        for chunk in _chunks(seed, traces, format, compress, rates, distractors):
            sink.write(chunk.data)
            spans += chunk.spans
            healthy += chunk.healthy
            distractor_ids += chunk.distractors
            for mode_id, ids in chunk.affected.items():
                affected[mode_id] += ids

    patterns = [
        Pattern(
            id=m.id,
            category=m.category,
            key=m.key,
            description=m.description,
            template=m.template,
            context=_context(m),
            affected_traces=len(affected[m.id]),
            affected_trace_ids=sorted(affected[m.id]),
        )
        for m in MODES
        if affected[m.id]
    ]
    truth = GroundTruth(
        corpus=Corpus(
            file=out.name,
            format=format,
            compressed=compress,
            traces=traces,
            spans=spans,
            seed=seed,
            rates=dict(rates),
            distractor_rate=distractors,
            services=[s.name for s in SERVICES],
        ),
        patterns=patterns,
        distractor_trace_ids=sorted(distractor_ids),
        healthy_traces=healthy,
        traces_path=out,
        truth_path=_truth_path(out),
    )
    truth_json = orjson.dumps(truth.model_dump(mode="json"), option=orjson.OPT_INDENT_2) + b"\n"
    truth.truth_path.write_bytes(truth_json)

    return truth
