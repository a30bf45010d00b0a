/**
 * Lines typed on stdin, for chat and the serve operator's console.
 *
 * @module
 */

import process from "node:process";

/**
 * Lines of stdin, split on LF only (a lone CR stays in the line, where the
 * chat escaper shows it, instead of silently starting a new message).
 *
 * @returns The lines, without their LF (or CRLF).
 */
export async function* stdinLines(): AsyncIterable<string> {
  const decoder = new TextDecoder();
  let buf = "";
  for await (const chunk of process.stdin) {
    buf += typeof chunk === "string"
      ? chunk
      : decoder.decode(chunk, { stream: true });
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      yield line.endsWith("\r") ? line.slice(0, -1) : line;
    }
  }
  buf += decoder.decode();
  if (buf !== "") yield buf;
}
