#!/usr/bin/env python3
"""A fixed number of chat completions through a proxy, for per-request counts (per_request.sh):
exactly N requests over C keep-alive connections (N/C each, one at a time on each), the load
benchmark's body (benches/load.rs), x-sim-tokens TOKENS (default 16), streamed if "stream".
Prints the requests sent and how many were not answered 200.
usage: fixed_load.py PORT N C [TOKENS] [stream]"""
import asyncio, sys
port, n, c = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
tokens = sys.argv[4] if len(sys.argv) > 4 else "16"
stream = len(sys.argv) > 5 and sys.argv[5] == "stream"
body = (b'{"messages":[{"role":"user","content":"hello"}],"model":"sim-model"' +
        (b',"stream":true}' if stream else b'}'))
req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer client\r\n"
       b"Content-Type: application/json\r\nx-sim-tokens: " + tokens.encode() +
       b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
async def conn(k):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    bad = 0
    for _ in range(k):
        w.write(req)
        head = await r.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"): bad += 1
        hl = head.lower()
        if b"content-length:" in hl:
            cl = int(hl.split(b"content-length:")[1].split(b"\r\n")[0])
            await r.readexactly(cl)
        else:  # chunked
            while True:
                size = int((await r.readuntil(b"\r\n")).strip(), 16)
                await r.readexactly(size + 2)
                if size == 0: break
    w.close()
    return bad
async def main():
    bad = await asyncio.gather(*(conn(n // c) for _ in range(c)))
    print(f"requests {n // c * c} non-200 {sum(bad)}")
asyncio.run(main())
