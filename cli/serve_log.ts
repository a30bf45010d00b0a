/**
 * Where `moat serve` writes its audit log: the `--log` file (reopened at
 * the same path on SIGHUP, after logrotate moved it), stderr, or, when the
 * operator's chat is on a terminal and stderr would be that terminal too, a
 * file beside it so that no JSON line lands on the chat screen.
 *
 * @module
 */

import * as fs from "node:fs";
import { UsageError } from "../lib/errors.ts";
import { escapeText } from "../lib/text.ts";
import { describeFsError } from "./options.ts";

/** The audit log's file when no `--log` is given and the chat is on a terminal. */
export const TERMINAL_AUDIT_LOG = "moat-audit.log";

/** Which of the standard streams are terminals. */
export interface Terminals {
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
}

/** Where the audit log goes. */
export interface AuditTarget {
  /** The file, or undefined for stderr. */
  file: string | undefined;
  /** True when no `--log` was given and the file is {@linkcode TERMINAL_AUDIT_LOG}. */
  byDefault: boolean;
}

/**
 * Chooses where the audit log goes: `--log FILE` to FILE, `--log -` to
 * stderr; without `--log`, to stderr unless stderr is a terminal that also
 * shows the chat (stdin or stdout is a terminal), where the lines would mix
 * with the chat screen: then to `./moat-audit.log`.
 *
 * @example
 * ```ts
 * import { chooseAuditLog } from "./serve_log.ts";
 * import assert from "node:assert/strict";
 * const screen = { stdin: true, stdout: true, stderr: true };
 * assert.deepEqual(chooseAuditLog(undefined, screen), { file: "moat-audit.log", byDefault: true });
 * assert.deepEqual(chooseAuditLog("-", screen), { file: undefined, byDefault: false });
 * const daemon = { stdin: false, stdout: false, stderr: false };
 * assert.deepEqual(chooseAuditLog(undefined, daemon), { file: undefined, byDefault: false });
 * ```
 *
 * @param log The `--log` value, if given.
 * @param terminals Which standard streams are terminals.
 * @returns The file, or undefined for stderr.
 */
export function chooseAuditLog(
  log: string | undefined,
  terminals: Terminals,
): AuditTarget {
  if (log === "-") return { file: undefined, byDefault: false };
  if (log !== undefined) return { file: log, byDefault: false };
  const chatScreen = terminals.stderr && (terminals.stdin || terminals.stdout);
  return chatScreen
    ? { file: TERMINAL_AUDIT_LOG, byDefault: true }
    : { file: undefined, byDefault: false };
}

/**
 * An audit log file, appended to one whole line per `write` call, that can
 * be reopened at its path. Until {@linkcode AuditFile.prototype.reopen}, lines
 * keep going to the file that was opened, wherever it was moved since (as
 * rsyslog does), so that logrotate's rename loses nothing; after it, they
 * go to the file now at the path. Writes are synchronous, so no line is
 * ever split between the two.
 */
export class AuditFile {
  /** The path given (relative paths stay relative to the start folder). */
  readonly path: string;
  #fd: number;

  /**
   * Opens (creating, mode 0640) `file` for appending.
   *
   * @param file The path.
   * @param what How to name it in an error, e.g. `--log "x"`.
   * @throws {UsageError} When it cannot be opened.
   */
  constructor(file: string, what: string) {
    this.path = file;
    this.#fd = openAppend(file, what);
  }

  /**
   * Appends a line and its newline.
   *
   * @param line One audit line.
   */
  write(line: string): void {
    fs.writeSync(this.#fd, line + "\n");
  }

  /**
   * Opens the path again and writes there from now on; on failure the old
   * file stays in use.
   *
   * @throws {UsageError} When the path cannot be opened.
   */
  reopen(): void {
    const fd = openAppend(this.path, `--log "${escapeText(this.path)}"`);
    const old = this.#fd;
    this.#fd = fd;
    fs.closeSync(old);
  }

  /** Closes the file; later writes throw (and the audit log drops them). */
  close(): void {
    try {
      fs.closeSync(this.#fd);
    } catch {
      // Already closed.
    }
  }
}

function openAppend(file: string, what: string): number {
  try {
    return fs.openSync(file, "a", 0o640);
  } catch (err) {
    throw new UsageError(`Cannot open ${what}: ${describeFsError(err)}`);
  }
}
