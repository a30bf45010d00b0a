/**
 * The audit log: one JSON object per line, appended to a sink.
 *
 * @module
 */

/** Audit events. */
export type AuditEvent =
  | "listening"
  | "accepted"
  | "refused"
  | "get_started"
  | "get_finished"
  | "chat"
  | "error"
  | "closed"
  | "shutdown"
  | string;

/** Characters JSON.stringify leaves raw that a terminal may act on. */
const UNSAFE_IN_JSON =
  /[\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb]/g;

function escapeUnit(ch: string): string {
  return "\\u" + ch.charCodeAt(0).toString(16).padStart(4, "0");
}

/** Receives each finished log line (without the newline). */
export type AuditSink = (line: string) => void;

/**
 * Writes audit records as JSON lines. `JSON.stringify` escapes every control
 * character, so no field value can break a line or forge another record.
 *
 * @example Log a refusal
 * ```ts
 * import { AuditLog } from "./audit.ts";
 * import assert from "node:assert/strict";
 * const lines: string[] = [];
 * const log = new AuditLog((l) => lines.push(l));
 * log.write("refused", { peer: "127.0.0.2:5000", reason: "not allowed" });
 * assert.equal(JSON.parse(lines[0]!).event, "refused");
 * ```
 */
export class AuditLog {
  #sink: AuditSink;

  /**
   * @param sink Where each line goes.
   */
  constructor(sink: AuditSink) {
    this.#sink = sink;
  }

  /**
   * Appends one record.
   *
   * @param event The event name.
   * @param fields Extra fields; `ts` and `event` come first.
   */
  write(event: AuditEvent, fields: Record<string, unknown> = {}): void {
    try {
      // JSON.stringify leaves DEL, C1 controls, line separators and bidi or
      // invisible format characters raw; escape them so the line is safe to
      // show on a terminal (the same JSON value).
      this.#sink(
        JSON.stringify({ ts: new Date().toISOString(), event, ...fields })
          .replace(UNSAFE_IN_JSON, escapeUnit),
      );
    } catch {
      // A failing sink (disk full, closed pipe) must not take the server down;
      // the server keeps serving, and the operator sees the gap in the log.
    }
  }
}
