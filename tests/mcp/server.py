"""An MCP server from the official Python SDK, for gateway tests.

usage: server.py streamable-http|sse PORT REPLICA_NAME

Listens on 127.0.0.1:PORT with the SDK's default DNS-rebinding protection for loopback
(Host must be 127.0.0.1:*/localhost:*, Origin http://127.0.0.1:*/localhost:*), so the
gateway's Host/Origin handling is exercised. One tool, `whoami(n)`, answers "<replica>:<n>".
"""

import sys

from mcp.server.mcpserver import MCPServer

transport, port, replica = sys.argv[1], int(sys.argv[2]), sys.argv[3]
server = MCPServer(f"gateway-test-{replica}")


@server.tool()
def whoami(n: int) -> str:
    """Names the replica that served the call."""
    return f"{replica}:{n}"


server.run(transport, host="127.0.0.1", port=port)
