/**
 * Spool pressure as a shipper's user sees it: when reading pauses because
 * the spool stayed full, and when it resumes.
 *
 * @module
 */

import type { FollowedLine } from "./follow.ts";
import type { Spool, SpoolEvent } from "./spool.ts";

/**
 * Bytes a spool record takes before its line (record header, timestamp,
 * input and position: docs/VAULT.md "Spool line record"), which count
 * against --spool-size. tests/ship_shipper_test.ts checks it against a spool.
 */
export const SPOOL_RECORD_OVERHEAD = 56;

/** What {@linkcode SpoolPressure} reports (part of the shipper's events). */
export type SpoolPressureEvent =
  | {
    /**
     * Reading is paused: the spool stayed full after trimming everything
     * acknowledged. `usedBytes` (on disk) plus `waitingBytes` (the lines
     * read and waiting, with their record headers) exceed `maxBytes`.
     */
    type: "full";
    usedBytes: number;
    maxBytes: number;
    waitingLines: number;
    waitingBytes: number;
  }
  | {
    /** Acknowledgements made room after a reported `full`; reading resumed. */
    type: "resumed";
  }
  | {
    /** Other spool news: repairs at open, a failed checkpoint. */
    type: "spool";
    event: Exclude<SpoolEvent, { type: "full" | "resumed" }>;
  };

/**
 * Reports spool pressure as the user sees it: `full` only when the spool is
 * still full after trimming what was acknowledged (a trim that makes room
 * at once is not news), with the size of what waits; `resumed` only after a
 * reported `full`, and not when closing.
 */
export class SpoolPressure {
  spool: Spool | undefined;
  /** The lines being handed to `append` (the `full` event fires inside it). */
  appending: readonly FollowedLine[] | undefined;
  closing = false;
  #reported = false;
  #onEvent: (event: SpoolPressureEvent) => void;

  constructor(onEvent: (event: SpoolPressureEvent) => void) {
    this.#onEvent = onEvent;
  }

  event(event: SpoolEvent): void {
    if (event.type === "full") {
      const spool = this.spool;
      const lines = this.appending ?? [];
      let waitingBytes = 0;
      for (const l of lines) {
        waitingBytes += SPOOL_RECORD_OVERHEAD + l.line.length;
      }
      if (spool === undefined) return;
      // The spool trims at once when full; what is left after that counts.
      spool.checkpoint().catch(() => {}).then(() => {
        if (!spool.full || this.closing || this.#reported) return;
        this.#reported = true;
        this.#onEvent({
          type: "full",
          usedBytes: spool.usedBytes,
          maxBytes: event.maxBytes,
          waitingLines: lines.length,
          waitingBytes,
        });
      });
    } else if (event.type === "resumed") {
      if (!this.#reported || this.closing) return;
      this.#reported = false;
      this.#onEvent({ type: "resumed" });
    } else {
      this.#onEvent({ type: "spool", event });
    }
  }
}
