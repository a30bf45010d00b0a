/**
 * How words and paths are written into a systemd unit: quoting for
 * `ExecStart=` and the path settings, and refusals for what a unit cannot
 * name.
 *
 * @module
 */

import * as path from "node:path";
import { UsageError } from "../errors.ts";

/** Words that systemd leaves alone without quotes (`%` and `$` are special). */
const SAFE_WORD = /^[A-Za-z0-9_@+=:,./-]+$/;

/**
 * Quotes one command-line word for a systemd `ExecStart=` line so that
 * systemd passes it to moat unchanged: words of plain characters stay bare;
 * anything else is put in double quotes with `\` and `"` escaped and control
 * characters written as C escapes. `%` (a unit specifier) becomes `%%` and `$`
 * (environment substitution) becomes `$$`, inside quotes too, because systemd
 * expands both after unquoting. A quoted `";"` is a plain argument, not a
 * command separator.
 *
 * @example Quote arguments
 * ```ts
 * import assert from "node:assert/strict";
 * import { quoteSystemdArg } from "./mod.ts";
 *
 * assert.equal(quoteSystemdArg("--root"), "--root");
 * assert.equal(quoteSystemdArg("/srv/my files"), '"/srv/my files"');
 * assert.equal(quoteSystemdArg('50% off, "$5"'), '"50%% off, \\"$$5\\""');
 * assert.equal(quoteSystemdArg(""), '""');
 * ```
 *
 * @param word The argument.
 * @returns The word as it must appear on the `ExecStart=` line.
 */
export function quoteSystemdArg(word: string): string {
  return quoteWord(word, true);
}

/**
 * Quotes a word for systemd; `$` is doubled only where systemd substitutes
 * environment variables (command lines, not path settings).
 */
export function quoteWord(word: string, dollar: boolean): string {
  if (SAFE_WORD.test(word)) return word;
  let out = '"';
  for (const ch of word) {
    const code = ch.codePointAt(0)!;
    if (ch === '"' || ch === "\\") out += "\\" + ch;
    else if (ch === "%") out += "%%";
    else if (ch === "$" && dollar) out += "$$";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\r") out += "\\r";
    else if (code < 0x20 || code === 0x7f) {
      out += "\\x" + code.toString(16).padStart(2, "0");
    } else out += ch;
  }
  return out + '"';
}

/** Rejects a path systemd cannot name in a unit or that moat cannot use. */
export function checkPath(p: string, what: string): void {
  // deno-lint-ignore no-control-regex
  if (/[\x00-\x1f\x7f]/.test(p)) {
    throw new UsageError(
      `Cannot write a systemd unit: ${what} ${
        JSON.stringify(p)
      } contains a control character`,
    );
  }
}

/** A path for a path-list setting: quoted when needed, `%` escaped. */
export function pathWord(p: string): string {
  return quoteWord(p, false);
}

/** A path for `BindPaths=`/`BindReadOnlyPaths=`, where `:` separates fields. */
export function bindWord(p: string): string {
  if (p.includes(":")) {
    throw new UsageError(
      `Cannot write a systemd unit: ${
        JSON.stringify(p)
      } contains ":", which a bind mount under ProtectHome= cannot name; move it out of /home, /root and /run/user`,
    );
  }
  return pathWord(p);
}

/**
 * The executable as the first `ExecStart=` word: absolute, and free of the
 * characters systemd refuses there (quotes, backslashes) or would expand.
 */
export function executableWord(p: string): string {
  if (!path.isAbsolute(p) || !p.startsWith("/")) {
    throw new UsageError(
      `Cannot write a systemd unit: the program path ${
        JSON.stringify(p)
      } is not absolute`,
    );
  }
  // deno-lint-ignore no-control-regex
  if (/["'\\$\x00-\x1f\x7f]/.test(p)) {
    throw new UsageError(
      `Cannot write a systemd unit: the program path ${
        JSON.stringify(p)
      } contains a quote, backslash, "$" or control character`,
    );
  }
  return quoteSystemdArg(p);
}

/** A Deno permission list: comma-separated, so no path may hold a comma. */
export function denoList(flag: string, items: readonly string[]): string {
  for (const item of items) {
    if (item.includes(",")) {
      throw new UsageError(
        `Cannot write a systemd unit for Deno: ${
          JSON.stringify(item)
        } contains a comma, which --${flag} cannot express; use the moat binary`,
      );
    }
  }
  return `--${flag}=${[...new Set(items)].join(",")}`;
}
