/**
 * Making untrusted text safe to show on a terminal or in one log line.
 *
 * @module
 */

// C0 controls, DEL, C1 controls, line/paragraph separators, and the
// bidirectional and zero-width format characters that can reorder or hide
// what a terminal shows.
const CONTROLS =
  "\\x00-\\x1f\\x7f-\\x9f\\u061c\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u2069\\ufeff";
// The same, plus the backslash, so that an escape cannot be forged.
const UNSAFE = new RegExp(`[${CONTROLS}\\\\]`, "g");
const CONTROL = new RegExp(`[${CONTROLS}]`, "g");

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

/** Options for {@linkcode escapeText}. */
export interface EscapeTextOptions {
  /**
   * Longest result, in UTF-16 code units before the `…` that marks a cut.
   * Bounds the work too: only this much of `text` is looked at.
   * @default {Infinity}
   */
  maxLength?: number;
}

/**
 * Escapes every character that could drive a terminal, break a line, or
 * forge another sender's tag: controls, backslash, bidi and zero-width marks.
 * With `maxLength`, also cuts the result to that length (then appends `…`),
 * never between the two halves of a surrogate pair.
 *
 * @param text Untrusted text.
 * @param options The length cap.
 * @returns Text that is one printable line.
 *
 * @example Escape an ANSI sequence and a carriage return
 * ```ts
 * import { escapeText } from "./text.ts";
 * import assert from "node:assert/strict";
 * assert.equal(escapeText("hi\r\x1b[2J"), "hi\\r\\e[2J");
 * assert.equal(escapeText("abcdef", { maxLength: 3 }), "abc…");
 * ```
 */
export function escapeText(
  text: string,
  options: EscapeTextOptions = {},
): string {
  // `options` may be a number when this is passed to String#replace.
  const max = typeof options === "object" ? options.maxLength : undefined;
  if (max === undefined) return text.replace(UNSAFE, escapeChar);
  const escaped = text.slice(0, max).replace(UNSAFE, escapeChar);
  return text.length <= max
    ? truncateText(escaped, max)
    : `${cutAt(escaped, max)}…`;
}

/**
 * Escapes what could drive a terminal or break a line, as
 * {@linkcode escapeText} does, but leaves backslashes alone: for moat's own
 * messages (an `ERR` line), which carry no sender tag to forge and may already
 * hold escapes such as a quoted path's `\u001b`.
 *
 * @param text Text to put on one line.
 * @returns The text with controls, separators, bidi and zero-width marks escaped.
 *
 * @example Keep a backslash, escape a newline
 * ```ts
 * import { escapeControls } from "./text.ts";
 * import assert from "node:assert/strict";
 * assert.equal(escapeControls('"a\\u001b"\nb'), '"a\\u001b"\\nb');
 * ```
 */
export function escapeControls(text: string): string {
  return text.replace(CONTROL, escapeChar);
}

/** Characters JSON.stringify leaves raw that a terminal may act on. */
const UNSAFE_IN_JSON =
  /[\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb]/g;

function escapeUnit(ch: string): string {
  return "\\u" + ch.charCodeAt(0).toString(16).padStart(4, "0");
}

/**
 * `JSON.stringify`, with the characters it leaves raw that a terminal may
 * act on (DEL, C1 controls, the soft hyphen, line separators, bidirectional
 * and invisible format characters) written as `\uXXXX`: the same JSON
 * value, safe to show on one line.
 *
 * @param value Anything `JSON.stringify` takes that gives a string.
 * @returns The JSON text.
 *
 * @example
 * ```ts
 * import { stringifySafe } from "./text.ts";
 * import assert from "node:assert/strict";
 * const json = stringifySafe({ path: "a\u202eb" });
 * assert.equal(json, '{"path":"a\\u202eb"}');
 * assert.deepEqual(JSON.parse(json), { path: "a\u202eb" });
 * ```
 */
export function stringifySafe(value: unknown): string {
  return JSON.stringify(value).replace(UNSAFE_IN_JSON, escapeUnit);
}

/**
 * Cuts text to a length, marking the cut with `…`, never between the two
 * halves of a surrogate pair.
 *
 * @param text Any text.
 * @param maxLength Longest result, in UTF-16 code units before the `…`.
 * @returns `text` itself when short enough.
 *
 * @example
 * ```ts
 * import { truncateText } from "./text.ts";
 * import assert from "node:assert/strict";
 * assert.equal(truncateText("abcdef", 4), "abcd…");
 * assert.equal(truncateText("abc", 4), "abc");
 * ```
 */
export function truncateText(text: string, maxLength: number): string {
  return text.length <= maxLength ? text : `${cutAt(text, maxLength)}…`;
}

/** The first `max` code units of `text`, one fewer if that would split a surrogate pair. */
function cutAt(text: string, max: number): string {
  const cut = text.slice(0, max);
  const last = cut.charCodeAt(cut.length - 1);
  return last >= 0xd800 && last <= 0xdbff ? cut.slice(0, -1) : cut;
}
