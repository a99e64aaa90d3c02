// Run one agent through the AG-UI endpoint with the official client (@ag-ui/client's HttpAgent),
// which validates every event against AG-UI's schemas and checks their order.
// Usage: node run.mjs <endpoint url> <access token> <forwardedProps JSON>
// Prints {"events": [...], "warnings": [...], "result": ..., "error": null | "<message>"} as JSON;
// exits 0 when the run's stream was accepted by the client, 1 when the client failed it.
import { HttpAgent } from "@ag-ui/client";

const [url, token, props] = process.argv.slice(2);
if (!url || !token) {
  console.error("usage: node run.mjs <endpoint url> <access token> [forwardedProps JSON]");
  process.exit(2);
}
const warnings = [];
console.warn = (...args) => warnings.push(args.map(String).join(" "));
console.error = (...args) => warnings.push(args.map(String).join(" "));

const events = [];
const agent = new HttpAgent({ url, headers: { Authorization: `Bearer ${token}` } });
let result = null;
let error = null;
try {
  const outcome = await agent.runAgent(
    { forwardedProps: props ? JSON.parse(props) : {} },
    { onEvent: ({ event }) => { events.push(event); } },
  );
  result = outcome.result ?? null;
} catch (failure) {
  error = failure instanceof Error ? failure.message : String(failure);
}
process.stdout.write(JSON.stringify({ events, warnings, result, error, messages: agent.messages }));
process.exit(error === null ? 0 : 1);
