"""Drives the gateway with the official OpenAI Python SDK and prints one JSON summary line.

usage: client.py BASE_URL KEY LIMITED_KEY
  BASE_URL     the gateway's /v1 URL
  KEY          a key that may use every model
  LIMITED_KEY  a key with `rpm: 2` and only the model `sim-model` (a refused request counts)
"""

import asyncio
import json
import sys

import openai

base, key, limited_key = sys.argv[1:4]
messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
out = {}


def error(e):
    return {"class": type(e).__name__, "status": getattr(e, "status_code", None), "message": str(e),
            "code": getattr(e, "code", None), "retry_after": e.response.headers.get("retry-after")
            if getattr(e, "response", None) is not None else None}


client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)

r = client.chat.completions.create(model="sim-model", messages=messages)
out["chat"] = {"content": r.choices[0].message.content, "finish": r.choices[0].finish_reason,
               "total_tokens": r.usage.total_tokens}

chunks = list(client.chat.completions.create(model="sim-model", messages=messages, stream=True,
                                              stream_options={"include_usage": True}))
out["stream_usage"] = {"chunks": len(chunks), "text": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
                       "usage_total": chunks[-1].usage.total_tokens if chunks[-1].usage else None}

chunks = list(client.chat.completions.create(model="sim-model", messages=messages, stream=True))
out["stream_plain"] = {"chunks": len(chunks), "usage_chunks": sum(1 for c in chunks if c.usage),
                       "empty_choices": sum(1 for c in chunks if not c.choices),
                       "text": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)}

r = client.completions.create(model="sim-model", prompt="hello")
out["completion"] = {"text": r.choices[0].text, "total_tokens": r.usage.total_tokens}

out["models"] = sorted(m.id for m in client.models.list())

raw = client.chat.completions.with_raw_response.create(model="sim-model", messages=messages,
                                                       extra_headers={"x-request-id": "sdk-req-42"})
out["raw"] = {"request_id": raw.headers.get("x-request-id"), "status": raw.status_code,
              "remaining": raw.headers.get("x-ratelimit-remaining-requests")}

big = "x" * 300_000
r = client.chat.completions.create(model="sim-model", messages=[{"role": "user", "content": big}])
out["big"] = {"prompt_tokens": r.usage.prompt_tokens}

for name, call in [
    ("bad_key", lambda: openai.OpenAI(base_url=base, api_key="sk-wrong", max_retries=0).models.list()),
    ("unknown_model", lambda: client.chat.completions.create(model="no-such-model", messages=messages)),
    ("bad_body", lambda: client.chat.completions.create(model="sim-model", messages=messages,
                                                        extra_body={"stream": "yes please"})),
]:
    try:
        call()
        out[name] = None
    except openai.APIStatusError as e:
        out[name] = error(e)

limited = openai.OpenAI(base_url=base, api_key=limited_key, max_retries=0)
try:
    limited.chat.completions.create(model="other-model", messages=messages)
    out["forbidden_model"] = None
except openai.APIStatusError as e:
    out["forbidden_model"] = error(e)
limited.chat.completions.create(model="sim-model", messages=messages)
try:
    limited.chat.completions.create(model="sim-model", messages=messages)
    out["rate_limited"] = None
except openai.APIStatusError as e:
    out["rate_limited"] = error(e)


async def concurrent():
    aclient = openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0)

    async def one(i):
        text = ""
        stream = await aclient.chat.completions.create(model="sim-model", stream=True,
                                                       messages=[{"role": "user", "content": f"question {i}"}])
        async for c in stream:
            if c.choices:
                text += c.choices[0].delta.content or ""
        return text

    texts = await asyncio.gather(*(one(i) for i in range(20)))
    await aclient.close()
    return sum(1 for t in texts if t)

out["async_streams_with_text"] = asyncio.run(concurrent())
print(json.dumps(out))
