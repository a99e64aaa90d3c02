// Validate an AsyncAPI document with the official parser (@asyncapi/parser).
// Usage: node validate.mjs <document>. Prints the parser's diagnostics as JSON
// ({"diagnostics": [{"severity", "code", "message", "path"}]}) and exits 1
// if any is an error (severity 0), 2 if the document cannot be read.
import { readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";

const [path] = process.argv.slice(2);
if (!path) {
  console.error("usage: node validate.mjs <asyncapi document>");
  process.exit(2);
}
let text;
try {
  text = await readFile(path, "utf8");
} catch (error) {
  console.error(`cannot read ${path}: ${error.message}`);
  process.exit(2);
}
const { document, diagnostics } = await new Parser().parse(text, { source: path });
const report = diagnostics.map(({ severity, code, message, path: at }) => ({ severity, code, message, path: at }));
console.log(JSON.stringify({ parsed: document !== undefined, diagnostics: report }, null, 1));
process.exit(document === undefined || report.some(({ severity }) => severity === 0) ? 1 : 0);
