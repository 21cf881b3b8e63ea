"""Drives an MCP server through the gateway with the official Python SDK's client.

usage: client.py streamable|sse|stateless URL KEY CALLS [ORIGIN]

Initializes (or, for `stateless`, pins protocol 2026-07-28), makes CALLS tool calls in a row
and prints one JSON line: {"ok": bool, "results": [...], "replicas": [...], "error": str|null}.
"""

import asyncio
import json
import sys
import traceback

import httpx2
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client


async def calls(session, n):
    out = []
    for i in range(n):
        r = await session.call_tool("whoami", {"n": i})
        if r.is_error:
            raise RuntimeError(f"call {i} failed: {r.content}")
        out.append(r.content[0].text)
    return out


async def main(mode, url, key, n, origin):
    headers = {"Authorization": f"Bearer {key}"}
    if origin:
        headers["Origin"] = origin
    if mode == "streamable":
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60)) as http:
            async with streamable_http_client(url, http_client=http) as (read, write, *_):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    return await calls(session, n)
    if mode == "sse":
        async with sse_client(url, headers=headers, timeout=30) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await calls(session, n)
    if mode == "stateless":
        from mcp.client.client import Client

        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60)) as http:
            transport = streamable_http_client(url, http_client=http)
            async with Client(transport, mode="2026-07-28") as client:
                return await calls(client, n)
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    mode, url, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    origin = sys.argv[5] if len(sys.argv) > 5 else None
    try:
        results = asyncio.run(main(mode, url, key, n, origin))
        replicas = sorted({r.split(":")[0] for r in results})
        print(json.dumps({"ok": True, "results": results, "replicas": replicas, "error": None}))
    except BaseException as e:  # noqa: BLE001 - the test wants every failure as JSON
        detail = "".join(traceback.format_exception(e))[-3000:]
        print(json.dumps({"ok": False, "results": [], "replicas": [], "error": detail}))
        sys.exit(1)
