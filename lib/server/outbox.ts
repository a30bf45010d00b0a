/**
 * The one writer of a session's connection.
 *
 * @module
 */

import type { Session } from "./session.ts";

const RESOLVED: Promise<void> = Promise.resolve();

/**
 * Serialises writes to one session's connection: exactly one owner writes at
 * a time. Each write counts as activity. Holds no closures: an idle chat
 * member should cost little more than its socket.
 *
 * @example Queue two writes and wait for both
 * ```ts ignore
 * const out = new Outbox(session);
 * out.push(first);
 * out.push(second, 1 << 20);
 * await out.flush();
 * ```
 */
export class Outbox {
  /** The session written to. */
  readonly session: Session;
  #chain: Promise<void> = RESOLVED;
  #pending = 0;

  /**
   * Makes an empty outbox.
   *
   * @param session The session whose connection this writes.
   */
  constructor(session: Session) {
    this.session = session;
  }

  /**
   * Queues bytes. A failed write closes the connection.
   *
   * @param bytes What to write; must not change until written.
   * @param limit Most bytes that may be queued, these included.
   * @returns False (and queues nothing) if that would pass `limit`.
   */
  push(bytes: Uint8Array, limit = Infinity): boolean {
    if (this.#pending + bytes.length > limit) return false;
    // Nothing queued: write now rather than a microtask later (chat latency).
    const idle = this.#pending === 0;
    this.#pending += bytes.length;
    this.#chain = idle
      ? this.#write(bytes)
      : this.#chain.then(() => this.#write(bytes));
    return true;
  }

  /** Bytes queued and not yet written. */
  get pending(): number {
    return this.#pending;
  }

  async #write(bytes: Uint8Array) {
    try {
      await this.session.conn.write(bytes);
      this.session.touch();
    } catch {
      this.session.close();
    } finally {
      this.#pending -= bytes.length;
    }
  }

  /**
   * Waits for the queue.
   *
   * @returns When everything queued so far was written (or failed).
   */
  flush(): Promise<void> {
    return this.#chain;
  }

  /**
   * Closes the session's connection; the first reason given is the one logged.
   *
   * @param reason Why, for the `closed` audit line.
   */
  end(reason: string): void {
    this.session.close(reason);
  }
}
