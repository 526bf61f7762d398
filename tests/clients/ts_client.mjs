// The official TypeScript SDK client (npm @modelcontextprotocol/sdk, pinned in package.json)
// talking to the gateway: over stdio (`intentgate stdio`, the agent's token in the environment)
// or Streamable HTTP (a bearer token).  It runs the calls given as JSON in argv[2]
// ([{name, arguments, _meta}]) after listing the tools, and prints one JSON line per call:
// {ok, isError, text, structured, meta} or {ok: false, error} when the client itself threw.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const calls = JSON.parse(process.argv[2]);
const transport = process.env.GATEWAY_URL
  ? new StreamableHTTPClientTransport(new URL(process.env.GATEWAY_URL), {
      requestInit: { headers: { Authorization: `Bearer ${process.env.AGENT_TOKEN}` } },
    })
  : new StdioClientTransport({
      command: process.env.GATEWAY_PYTHON,
      args: ["-m", "intentgate", "stdio", "--config", process.env.GATEWAY_CONFIG],
      cwd: process.env.GATEWAY_ROOT,
      env: { ...process.env, INTENTGATE_AGENT_TOKEN: process.env.AGENT_TOKEN },
      stderr: "ignore",
    });
const client = new Client({ name: "ts-sdk-interop", version: "1.0.0" });
await client.connect(transport);
const tools = await client.listTools();  // also caches output schemas, which callTool validates against
console.log(JSON.stringify({ tools: tools.tools.map((t) => t.name) }));
let task = null;
for (const call of calls) {
  const args = JSON.parse(JSON.stringify(call.arguments).replaceAll("$TASK", task ?? ""));
  const meta = call._meta ? JSON.parse(JSON.stringify(call._meta).replaceAll("$TASK", task ?? "")) : undefined;
  try {
    const r = await client.callTool({ name: call.name, arguments: args, _meta: meta });
    if (r.structuredContent && r.structuredContent.task && !task) task = r.structuredContent.task;
    console.log(JSON.stringify({ ok: true, isError: !!r.isError, text: r.content?.[0]?.text ?? null,
                                 structured: r.structuredContent ?? null, meta: r._meta ?? null }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, error: String(e.message ?? e) }));
  }
}
await client.close();
