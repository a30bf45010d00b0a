/**
 * What a listener does when the process runs out of file descriptors.
 *
 * A listener whose accept fails with EMFILE must neither stop accepting (the
 * port stays bound, and every later client hangs) nor retry in a tight loop.
 * {@linkcode DescriptorReserve} keeps the classic reserve: one spare
 * descriptor (an open `/dev/null`) held while all is well. When descriptors
 * run out the spare is closed, so that the runtime's accept can take one
 * pending connection; the listener answers it with its busy notice and closes
 * it at once, which frees the descriptor for the next one. Meanwhile a timer
 * with exponential backoff (1 ms doubling up to 1 s) checks whether
 * descriptors freed up: once the spare and one more descriptor can be opened,
 * the spare is kept and connections are yielded again. The listener reports
 * the episode twice, when it starts and when it ends, never per attempt.
 *
 * How exhaustion is noticed depends on the runtime:
 *
 * - `Deno.listen`: `accept()` rejects with code EMFILE, and the Deno listener
 *   calls {@linkcode DescriptorReserve.exhaust} itself (`watch: false`).
 * - `Bun.listen` accepts in native code (uSockets), which on EMFILE neither
 *   reports the failure nor waits: in `us_internal_dispatch_ready_poll`
 *   (`packages/bun-usockets/src/loop.c`) a failed `bsd_accept_socket` does
 *   nothing ("Todo: start timer here"), so the level-triggered listening
 *   socket stays readable and epoll returns at once, forever: 100% CPU until
 *   a descriptor frees up (measured on Bun 1.4.5; `node:net` servers on Bun
 *   sit on the same loop and spin too).
 *   For this listener the reserve probes with one open of
 *   `/dev/null` every {@linkcode WATCH_MS} (`watch: true`): when that fails
 *   with EMFILE, the episode starts and the spare is released, so the spin
 *   lasts at most one probe interval and the pending connections are
 *   answered instead of left waiting.
 *
 * (TLS ports listen the same way on both runtimes. Deno's `node:net` server,
 * which `tls.Server` is built on, is not used: after EMFILE it accepts
 * nothing more, see `./node_tls.ts`.)
 *
 * When `/dev/null` cannot be opened at all (no such device, no permission)
 * there is no reserve: the listener still backs off and recovers, but the
 * connections that arrive while descriptors are exhausted wait in the
 * kernel's backlog instead of being answered.
 *
 * @module
 */

import * as fs from "node:fs";
import {
  clearInterval,
  clearTimeout,
  setInterval,
  setTimeout,
} from "node:timers";
import { setTimeout as sleep } from "node:timers/promises";
import type { AcceptErrorEvent, Conn } from "./types.ts";
import { errorCode } from "./_errors.ts";

/** How often a watching reserve checks that a descriptor can still be opened. */
export const WATCH_MS = 100;
/** First retry delay after a failed accept or recovery check. */
const MIN_DELAY_MS = 1;
/** Longest retry delay. */
const MAX_DELAY_MS = 1_000;
/** What the spare and the probes open. */
const SPARE_PATH = "/dev/null";

/** Options for {@linkcode DescriptorReserve}. */
export interface DescriptorReserveOptions {
  /** The listener's address, for messages: "127.0.0.1:4320". */
  where: string;
  /** Told when an episode starts and when it ends. */
  onAcceptError?: ((event: AcceptErrorEvent) => void) | undefined;
  /** Written to each connection turned away; nothing when undefined. */
  busyNotice?: Uint8Array | undefined;
  /** Probe every {@linkcode WATCH_MS} (listeners that never see accept errors). */
  watch: boolean;
}

/**
 * True for the errors that mean "no descriptor left" (per process or per
 * system), which the reserve can do something about.
 *
 * @param error What accept or open threw.
 * @returns Whether it is EMFILE or ENFILE.
 */
export function isOutOfDescriptors(error: unknown): boolean {
  const code = errorCode(error);
  return code === "EMFILE" || code === "ENFILE";
}

/** One spare file descriptor and the exhaustion episodes of one listener. */
export class DescriptorReserve {
  #options: DescriptorReserveOptions;
  /** The spare's descriptor; undefined while released (or never opened). */
  #spare: number | undefined;
  /** False once opening `/dev/null` failed for another reason than EMFILE. */
  #usable = true;
  #exhausted = false;
  /**
   * The current episode ends at the next successful accept rather than by a
   * descriptor check: its cause was not EMFILE, or there is no reserve.
   */
  #endsOnAccept = false;
  /** Connections turned away in the current episode. */
  #busy = 0;
  #recheckDelay = MIN_DELAY_MS;
  #retryDelay = MIN_DELAY_MS;
  #recheck: ReturnType<typeof setTimeout> | undefined;
  #watch: ReturnType<typeof setInterval> | undefined;
  #closed = false;

  /**
   * Opens the spare and, with `watch`, starts probing.
   *
   * @param options Reporting, busy notice, and whether to probe.
   */
  constructor(options: DescriptorReserveOptions) {
    this.#options = options;
    this.#spare = this.#open();
    if (options.watch && this.#usable) {
      this.#watch = setInterval(() => this.#probe(), WATCH_MS);
      this.#watch.unref();
    }
  }

  /** True while an episode lasts: new connections are turned away. */
  get exhausted(): boolean {
    return this.#exhausted;
  }

  /**
   * Starts an episode (reported once) and releases the spare.
   *
   * @param reason One line saying why accepting failed.
   * @param outOfDescriptors False when accept failed for another reason: the
   * episode then ends at the next successful accept.
   * @returns True if the spare was released, so that an accept retried at
   * once can succeed; false if there was none to release (wait with
   * {@linkcode DescriptorReserve.backoff} before retrying).
   */
  exhaust(reason: string, outOfDescriptors = true): boolean {
    if (this.#closed) return false;
    if (!this.#exhausted) {
      this.#exhausted = true;
      this.#endsOnAccept = !outOfDescriptors || !this.#usable;
      this.#busy = 0;
      this.#recheckDelay = MIN_DELAY_MS;
      this.#options.onAcceptError?.({
        kind: "exhausted",
        message: this.#endsOnAccept
          ? `${reason}: retrying with backoff`
          : `${reason}: turning new connections away until descriptors free up`,
      });
      if (!this.#endsOnAccept) this.#scheduleRecheck();
    }
    if (!outOfDescriptors) return false;
    const spare = this.#spare;
    if (spare === undefined) return false;
    this.#spare = undefined;
    closeQuietly(spare);
    return true;
  }

  /**
   * Waits before the next accept after one that failed, doubling the wait
   * each time (1 ms up to 1 s) until {@linkcode DescriptorReserve.accepted}.
   *
   * @returns Resolves after the delay.
   */
  backoff(): Promise<void> {
    const delay = this.#retryDelay;
    this.#retryDelay = Math.min(delay * 2, MAX_DELAY_MS);
    return sleep(delay);
  }

  /**
   * An accept succeeded: the next failure waits the shortest delay again, and
   * an episode that a descriptor check cannot end is over.
   */
  accepted(): void {
    this.#retryDelay = MIN_DELAY_MS;
    if (this.#exhausted && this.#endsOnAccept) this.#end();
  }

  /**
   * Turns a connection away during an episode: writes the busy notice, if
   * any, then closes. Never rejects; the caller need not wait for it.
   *
   * @param conn A connection accepted while exhausted.
   * @returns Resolves once the connection is closed.
   */
  async refuse(conn: Conn): Promise<void> {
    this.#busy++;
    try {
      const notice = this.#options.busyNotice;
      if (notice !== undefined) await conn.write(notice);
    } catch {
      // The peer is gone already; closing is all that is left.
    } finally {
      conn.close();
    }
  }

  /** Closes the spare and stops every timer. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#watch);
    clearTimeout(this.#recheck);
    if (this.#spare !== undefined) closeQuietly(this.#spare);
    this.#spare = undefined;
  }

  /** Opens `/dev/null`; undefined if that fails (and gives up for good unless EMFILE). */
  #open(): number | undefined {
    if (!this.#usable) return undefined;
    try {
      return fs.openSync(SPARE_PATH, "r");
    } catch (error) {
      if (!isOutOfDescriptors(error)) this.#usable = false;
      return undefined;
    }
  }

  /** The watch: one open and close of `/dev/null`, or an episode if that fails. */
  #probe(): void {
    if (this.#exhausted || this.#closed) return;
    if (this.#spare === undefined) {
      // Opening the spare failed earlier; it doubles as the probe.
      this.#spare = this.#open();
      if (this.#spare === undefined && this.#usable) {
        this.exhaust(
          `Cannot accept on ${this.#options.where}: too many open files`,
        );
      }
      return;
    }
    const probe = this.#open();
    if (probe !== undefined) closeQuietly(probe);
    else if (this.#usable) {
      this.exhaust(
        `Cannot accept on ${this.#options.where}: too many open files`,
      );
    }
  }

  #scheduleRecheck(): void {
    const delay = this.#recheckDelay;
    this.#recheckDelay = Math.min(delay * 2, MAX_DELAY_MS);
    this.#recheck = setTimeout(() => this.#recover(), delay);
    this.#recheck.unref();
  }

  /** Ends the episode if the spare and one more descriptor can be had. */
  #recover(): void {
    if (this.#closed || !this.#exhausted || this.#endsOnAccept) return;
    this.#spare ??= this.#open();
    const probe = this.#spare === undefined ? undefined : this.#open();
    if (probe === undefined) {
      // Still short: give the spare back to the accepts that answer BUSY.
      if (this.#spare !== undefined) closeQuietly(this.#spare);
      this.#spare = undefined;
      this.#scheduleRecheck();
      return;
    }
    closeQuietly(probe);
    this.#end();
  }

  #end(): void {
    this.#exhausted = false;
    this.#retryDelay = MIN_DELAY_MS;
    this.#options.onAcceptError?.({
      kind: "recovered",
      message: `Accepting again; ${this.#busy} connection${
        this.#busy === 1 ? " was" : "s were"
      } turned away meanwhile`,
      busy: this.#busy,
    });
  }
}

function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    // Nothing to do about a descriptor that will not close.
  }
}
