"""A scripted model behind an OpenAI-compatible Chat Completions endpoint, so the benchmark runs offline.

It behaves like a capable but literal model: it reads the harness it is given (the system prompt and
the tool schemas in each request) and follows it. It calls the tools the prompt tells it to use,
whether or not they are offered; it writes an amount the way the tool's schema asks (a number for a
number, the customer's "$24.50" for a string); and when a tool fails it apologises instead of trying
again. Fixing the harness therefore changes what it does, as it would for a real model.

    python model_server.py --port 8011     # or let run.py start one in-process
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ORDER = re.compile(r"\bA-\d{4}\b")
SKU = re.compile(r"\bSKU-\d{2}\b")
AMOUNT = re.compile(r"\$(\d+(?:\.\d{1,2})?)")
_ids = itertools.count(1)


def decide(body: dict[str, Any]) -> dict[str, Any]:
    """The assistant message answering one request: tool calls, or the final text."""
    messages = body.get("messages") or []
    system = " ".join(_text(m) for m in messages if m.get("role") in ("system", "developer"))
    user = next((_text(m) for m in messages if m.get("role") == "user"), "")
    offered = {t["function"]["name"]: t["function"].get("parameters", {}) for t in body.get("tools") or []}
    results = [_text(m) for m in messages if m.get("role") == "tool"]
    order, sku, amount = ORDER.search(user), SKU.search(user), AMOUNT.search(user)
    lowered = user.lower()

    if "refund" in lowered and order and amount:
        if not results:
            schema = offered.get("issue_refund", {}).get("properties", {}).get("amount", {})
            value: Any = (
                float(amount.group(1)) if schema.get("type") in ("number", "integer") else amount.group(0)
            )
            return _call("issue_refund", {"order_id": order.group(0), "amount": value})
        if _failed(results[-1]):
            return _say(f"I'm sorry, I couldn't process the refund for order {order.group(0)}.")
        return _say(f"Done: I refunded ${float(amount.group(1)):.2f} for order {order.group(0)}.")

    if "warranty" in lowered and order:
        tool = "check_warranty" if "check_warranty" in system else "lookup_order"
        if not results:
            return _call(tool, {"order_id": order.group(0)})
        if _failed(results[-1]):
            return _say("I'm sorry, I couldn't check the warranty right now.")
        found = json.loads(results[-1])
        if found.get("delivered") is None:
            return _say(
                f"Order {order.group(0)} has not been delivered yet; its warranty starts on delivery."
            )
        end = _months_later(found["delivered"], 12)
        today = re.search(r"Today is (\d{4}-\d{2}-\d{2})", system)
        if today and end < dt.date.fromisoformat(today.group(1)):
            return _say(f"The warranty for order {order.group(0)} expired on {end.isoformat()}.")
        return _say(f"Order {order.group(0)} is covered by the warranty until {end.isoformat()}.")

    if sku:
        if not results:
            return _call("check_stock", {"sku": sku.group(0)})
        if _failed(results[-1]):
            return _say(f"I'm sorry, I can't check the stock of {sku.group(0)} right now.")
        count = json.loads(results[-1])["in_stock"]
        if count == 0:
            return _say(f"{sku.group(0)} is out of stock at the moment.")
        return _say(f"Yes, {sku.group(0)} has {count} units in stock.")

    if order:
        if not results:
            return _call("lookup_order", {"order_id": order.group(0)})
        if _failed(results[-1]):
            return _say(f"I'm sorry, I couldn't find order {order.group(0)}.")
        found = json.loads(results[-1])
        return _say(f"Your {found['item']} (order {order.group(0)}) is {found['status']}.")
    return _say("How can I help you with your order?")


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def _failed(result: str) -> bool:
    return not result.lstrip().startswith(("{", "["))


def _months_later(day: str, months: int) -> dt.date:
    start = dt.date.fromisoformat(day)
    month = start.month - 1 + months
    return start.replace(year=start.year + month // 12, month=month % 12 + 1, day=min(start.day, 28))


def _call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    call = {
        "id": f"call_{next(_ids)}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def _say(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes; do not wait on delayed ACKs

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": "scripted-support-model", "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
            return
        message = decide(body)
        prompt = len(json.dumps(body.get("messages") or [])) // 4 + 40 * len(body.get("tools") or [])
        completion = len(json.dumps(message)) // 4
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        reply_id, model = f"chatcmpl-{next(_ids)}", body.get("model", "scripted-support-model")
        if body.get("stream"):
            delta = dict(message)
            if "tool_calls" in delta:
                delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(delta["tool_calls"])]
            chunks = [
                {
                    "id": reply_id,
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                },
                {
                    "id": reply_id,
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                },
            ]
            data = (
                b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
            )
            self._send(200, data, "text/event-stream")
            return
        self._json(
            200,
            {
                "id": reply_id,
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage,
            },
        )

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def serve(port: int = 0) -> Iterator[str]:
    """Serve the scripted model on loopback in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    with serve(args.port) as url:
        print(f"scripted model at {url} (Ctrl-C stops it)", flush=True)
        with suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
