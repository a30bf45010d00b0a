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
      this.#sink(
        JSON.stringify({ ts: new Date().toISOString(), event, ...fields }),
      );
    } catch {
      // A failing sink (disk full, closed pipe) must not take the server down;
      // the server keeps serving, and the operator sees the gap in the log.
    }
  }
}
