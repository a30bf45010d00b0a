/**
 * The waiting line the server's shared budgets have in common (the vault
 * append budget, the send budget, the chat rate): a taker that does not fit
 * waits in the line until the budget's owner resolves it, and one whose
 * connection closes first leaves the line with a
 * {@linkcode ConnectionClosedError}.
 *
 * @module
 */

import { ConnectionClosedError } from "../errors.ts";

/**
 * @param what What the connection waited for, e.g. `"the vault"`.
 * @returns "Connection closed while waiting for …".
 */
export function closedWhileWaiting(what: string): ConnectionClosedError {
  return new ConnectionClosedError(
    `Connection closed while waiting for ${what}`,
  );
}

/**
 * Puts a waiter at the end of `line` and settles when the line's owner calls
 * the `resolve` it was made with, or rejects when `signal` aborts first.
 * `line` must stay the same array for as long as waiters are in it.
 *
 * @example
 * ```ts
 * import { waitInLine } from "./wait_line.ts";
 * import assert from "node:assert/strict";
 *
 * const line: { resolve: (n: number) => void }[] = [];
 * const closed = new AbortController();
 * const first = waitInLine(line, (resolve) => ({ resolve }), "a turn");
 * const second = waitInLine(line, (resolve) => ({ resolve }), "a turn", {
 *   signal: closed.signal,
 * });
 * closed.abort();
 * await assert.rejects(second, /while waiting for a turn/);
 * assert.equal(line.length, 1);
 * line.shift()!.resolve(7);
 * assert.equal(await first, 7);
 * ```
 *
 * @param line The waiters, first in line first.
 * @param make Makes the waiter around its `resolve`.
 * @param what What it waits for, for the error.
 * @param options `signal` ends the wait (the connection was closed);
 * `onLeave` runs after an aborted waiter left the line (the first in line
 * may have been all that held the others back).
 * @returns What the waiter was resolved with.
 * @throws {ConnectionClosedError} When `signal` aborts first.
 */
export function waitInLine<T, W>(
  line: W[],
  make: (resolve: (value: T) => void) => W,
  what: string,
  options: { signal?: AbortSignal | undefined; onLeave?: () => void } = {},
): Promise<T> {
  const { signal, onLeave } = options;
  if (signal?.aborted) return Promise.reject(closedWhileWaiting(what));
  return new Promise((resolve, reject) => {
    const waiter = make((value) => {
      signal?.removeEventListener("abort", abort);
      resolve(value);
    });
    const abort = () => {
      const i = line.indexOf(waiter);
      if (i >= 0) line.splice(i, 1);
      reject(closedWhileWaiting(what));
      onLeave?.();
    };
    signal?.addEventListener("abort", abort, { once: true });
    line.push(waiter);
  });
}
