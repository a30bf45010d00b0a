/**
 * The queue between a callback-style server (Bun, `node:tls`) and the
 * pull-style {@linkcode Listener} iteration: accepted connections wait here
 * until iterated; after `close()` new ones are closed at once.
 *
 * @module
 */

import type { Conn } from "./types.ts";

/** Accepted connections, handed to one async iteration in order. */
export class AcceptQueue {
  #accepted: Conn[] = [];
  #waiters: ((conn: Conn | null) => void)[] = [];
  #closed = false;

  /**
   * Hands a new connection to a waiting iteration, or queues it.
   *
   * @param conn The accepted connection; closed at once if the queue is closed.
   */
  push(conn: Conn): void {
    if (this.#closed) {
      conn.close();
      return;
    }
    const wake = this.#waiters.shift();
    if (wake) wake(conn);
    else this.#accepted.push(conn);
  }

  /**
   * Closes connections nobody took and ends the iteration. Idempotent.
   *
   * @returns false if it was already closed.
   */
  close(): boolean {
    if (this.#closed) return false;
    this.#closed = true;
    for (const conn of this.#accepted) conn.close();
    this.#accepted = [];
    for (const wake of this.#waiters) wake(null);
    this.#waiters = [];
    return true;
  }

  /** Yields connections as they arrive, until closed. */
  async *[Symbol.asyncIterator](): AsyncGenerator<Conn, void, undefined> {
    while (true) {
      const conn = this.#accepted.shift() ?? await this.#next();
      if (conn === null) return;
      yield conn;
    }
  }

  #next(): Promise<Conn | null> {
    if (this.#closed) return Promise.resolve(null);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }
}
