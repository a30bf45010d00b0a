/**
 * Making untrusted text safe to show on a terminal or in one log line.
 *
 * @module
 */

// C0 controls, DEL, C1 controls, the backslash (so an escape cannot be forged),
// line/paragraph separators, and the bidirectional and zero-width format
// characters that can reorder or hide what a terminal shows.
const UNSAFE =
  // deno-lint-ignore no-control-regex -- matching controls is the point
  /[\x00-\x1f\x7f-\x9f\\\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g;

const NAMED: Record<string, string> = {
  "\n": "\\n",
  "\r": "\\r",
  "\t": "\\t",
  "\x1b": "\\e",
  "\\": "\\\\",
};

function escapeChar(ch: string): string {
  const named = NAMED[ch];
  if (named !== undefined) return named;
  const code = ch.charCodeAt(0);
  return code <= 0xff
    ? `\\x${code.toString(16).padStart(2, "0")}`
    : `\\u{${code.toString(16)}}`;
}

/**
 * Escapes every character that could drive a terminal, break a line, or
 * forge another sender's tag: controls, backslash, bidi and zero-width marks.
 *
 * @param text Untrusted text.
 * @returns Text that is one printable line.
 *
 * @example Escape an ANSI sequence and a carriage return
 * ```ts
 * import { escapeText } from "./text.ts";
 * import assert from "node:assert/strict";
 * assert.equal(escapeText("hi\r\x1b[2J"), "hi\\r\\e[2J");
 * ```
 */
export function escapeText(text: string): string {
  return text.replace(UNSAFE, escapeChar);
}
