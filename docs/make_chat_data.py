"""Writes datasets/chat/conversations.jsonl: tool-use and reasoning conversations for the
chat task (tools in datasets/chat/tools.json).

Run from anywhere: `python docs/make_chat_data.py`. Deterministic (seeded), so the
committed file is what this script writes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "datasets" / "chat"
SYSTEM = "You are a helpful assistant for the Go framework team."

PACKAGES = {
    "aegis": "schema validation with a Validate() method",
    "flux": "a one-way data flow pattern for state updates",
    "sentry": "request tracing across services",
    "atlas": "typed routing for HTTP handlers",
    "beacon": "health checks and readiness probes",
    "cobalt": "connection pooling for databases",
    "delta": "diffing of nested structs",
    "ember": "structured logging with levels",
    "forge": "code generation from interfaces",
    "harbor": "container image metadata helpers",
    "keel": "graceful shutdown of servers",
    "lumen": "metrics counters and histograms",
    "mantle": "configuration loading from files and env",
    "nexus": "a message bus between modules",
    "orbit": "background job scheduling",
    "pulse": "rate limiting with token buckets",
    "quill": "templated email rendering",
    "relay": "retries with exponential backoff",
    "spire": "feature flags with rollout rules",
    "vault": "secret storage with key rotation",
}
CITIES = [
    "Paris",
    "Berlin",
    "Tokyo",
    "Lima",
    "Oslo",
    "Cairo",
    "Delhi",
    "Austin",
    "Quito",
    "Rome",
    "Madrid",
    "Seoul",
    "Dublin",
    "Perth",
    "Nairobi",
    "Lisbon",
    "Vienna",
    "Prague",
    "Denver",
    "Hanoi",
]
SKIES = ["sunny", "cloudy", "rainy", "windy", "clear"]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD"]
RATES = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 151.0, "CHF": 0.88, "CAD": 1.37}

DOC_ASKS = [
    "Show me the {p} docs.",
    "What does the {p} package do?",
    "I need the documentation for {p}.",
    "Look up {p} for me.",
    "Can you find the docs of {p}?",
]
WEATHER_ASKS = [
    "What's the weather in {c}?",
    "Is it cold in {c} right now?",
    "How is the weather in {c} today?",
    "Tell me the weather for {c}.",
]
WEATHER_ASKS_F = [
    "What's the weather in {c} in fahrenheit?",
    "Weather in {c} in fahrenheit please.",
]
CONVERT_ASKS = [
    "Convert {a} {f} to {t}.",
    "How much is {a} {f} in {t}?",
    "What is {a} {f} in {t}?",
]
GREETINGS = [
    ("Hi!", "Hello! How can I help you today?"),
    ("Thanks, that helps.", "You're welcome!"),
    ("Who are you?", "I am an assistant for the Go framework team."),
    ("Good morning.", "Good morning! How can I help you today?"),
]


def call(name: str, arguments: dict) -> dict:
    return {"role": "assistant", "tool_calls": [{"name": name, "arguments": arguments}]}


def docs(rng: random.Random, think: bool) -> list[dict]:
    package = rng.choice(list(PACKAGES))
    feature = PACKAGES[package]
    turn = call("lookup_docs", {"package": package})
    if think:
        turn["content"] = f"<think>The user wants the {package} docs, so I look them up.</think>"
    return [
        {"role": "user", "content": rng.choice(DOC_ASKS).format(p=package)},
        turn,
        {"role": "tool", "content": f"{package}: {feature}."},
        {"role": "assistant", "content": f"The {package} package provides {feature}."},
    ]


def weather(rng: random.Random, think: bool) -> list[dict]:
    city = rng.choice(CITIES)
    fahrenheit = rng.random() < 0.3
    ask = rng.choice(WEATHER_ASKS_F if fahrenheit else WEATHER_ASKS).format(c=city)
    arguments: dict = {"city": city}
    unit = "fahrenheit" if fahrenheit else "celsius"
    if fahrenheit:
        arguments["unit"] = unit
    temp = rng.randint(50, 85) if fahrenheit else rng.randint(-5, 30)
    sky = rng.choice(SKIES)
    turn = call("get_weather", arguments)
    if think:
        turn["content"] = f"<think>I need the current weather in {city}.</think>"
    result = {"city": city, "temperature": temp, "unit": unit, "sky": sky}
    return [
        {"role": "user", "content": ask},
        turn,
        {"role": "tool", "content": json.dumps(result)},
        {"role": "assistant", "content": f"It is {temp} degrees {unit} and {sky} in {city}."},
    ]


def convert(rng: random.Random, think: bool) -> list[dict]:
    source, target = rng.sample(CURRENCIES, 2)
    amount = rng.choice([5, 10, 20, 25, 50, 75, 100, 120, 200, 250, 500])
    result = round(amount * RATES[target] / RATES[source], 2)
    turn = call("convert_currency", {"amount": amount, "from": source, "to": target})
    if think:
        turn["content"] = f"<think>I convert {amount} {source} to {target} with the tool.</think>"
    return [
        {"role": "user", "content": rng.choice(CONVERT_ASKS).format(a=amount, f=source, t=target)},
        turn,
        {"role": "tool", "content": json.dumps({"result": result, "currency": target})},
        {"role": "assistant", "content": f"{amount} {source} is {result} {target}."},
    ]


def compare(rng: random.Random) -> list[dict]:
    a, b = rng.sample(range(10, 99), 2)
    big = max(a, b)
    return [
        {"role": "user", "content": f"Which is larger, {a} or {b}?"},
        {
            "role": "assistant",
            "content": f"<think>Compare {a} and {b}: {big} is larger.</think>\n{big} is larger.",
        },
    ]


def greeting(rng: random.Random) -> list[dict]:
    ask, answer = rng.choice(GREETINGS)
    return [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]


def conversation(rng: random.Random) -> dict:
    roll = rng.random()
    think = rng.random() < 0.25
    if roll < 0.25:
        messages = docs(rng, think)
    elif roll < 0.5:
        messages = weather(rng, think)
    elif roll < 0.7:
        messages = convert(rng, think)
    elif roll < 0.88:
        messages = compare(rng)
    else:
        messages = greeting(rng)
    if rng.random() < 0.3:
        messages = [{"role": "system", "content": SYSTEM}, *messages]
    return {"messages": messages}


def main(count: int = 160, seed: int = 7) -> None:
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < count:
        row = conversation(rng)
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    with (HERE / "conversations.jsonl").open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
