/**
 * The one writer of a session's connection.
 *
 * @module
 */

import type { Session } from "./session.ts";

const RESOLVED: Promise<void> = Promise.resolve();
const EMPTY = new Uint8Array(0);

/**
 * Most bytes of queued chunks joined into one write: a member that fell
 * behind catches up in few writes, and the copy stays small.
 */
const JOIN_MAX = 65_536;

/**
 * What a queued chunk costs beyond its bytes, counted against a push's
 * `limit`: its slot in the queue. Chat lines are shared by every member, so
 * a member far behind on short lines holds mostly slots; without this a
 * member 1 MiB behind on 25-byte lines held 0.42 MiB of its own.
 */
const CHUNK_COST = 32;

/**
 * Serialises writes to one session's connection: exactly one owner writes at
 * a time. Each write counts as activity. Holds no closures: an idle chat
 * member should cost little more than its socket. What waits is a list of
 * the chunks themselves (a chat line's bytes are shared by every member),
 * not a promise per chunk: a promise and its closure cost ~200 bytes, eight
 * times a short chat line, so a member 1 MiB behind held 8 MiB.
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
  /** Chunks waiting for the write in progress, from `#head` on. */
  #queue: Uint8Array[] = [];
  #head = 0;
  #pending = 0;
  /** True while the writer runs: it ends when the queue is empty. */
  #writing = false;
  /** The writer's promise, for {@linkcode Outbox.prototype.flush}. */
  #writer: Promise<void> = RESOLVED;

  /**
   * Makes an empty outbox.
   *
   * @param session The session whose connection this writes.
   */
  constructor(session: Session) {
    this.session = session;
  }

  /**
   * Queues bytes. A failed write closes the connection and drops what is
   * queued.
   *
   * @param bytes What to write; must not change until written.
   * @param limit Most bytes that may be queued, these included, each chunk
   * waiting to be written counted {@linkcode CHUNK_COST} bytes more.
   * @returns False (and queues nothing) if that would pass `limit`.
   */
  push(bytes: Uint8Array, limit = Infinity): boolean {
    // Chunks waiting (not yet taken by the writer), this one included.
    const chunks = this.#queue.length - this.#head + 1;
    if (this.#pending + bytes.length + chunks * CHUNK_COST > limit) {
      return false;
    }
    this.#pending += bytes.length;
    this.#queue.push(bytes);
    // Nothing being written: the write starts now, not a microtask later
    // (chat latency).
    if (!this.#writing) {
      this.#writing = true;
      this.#writer = this.#write();
    }
    return true;
  }

  /** Bytes queued and not yet written. */
  get pending(): number {
    return this.#pending;
  }

  async #write() {
    try {
      while (this.#head < this.#queue.length) {
        const bytes = this.#take();
        try {
          await this.session.conn.write(bytes);
        } catch {
          this.session.close();
          this.#queue = [];
          this.#head = 0;
          this.#pending = 0;
          return;
        }
        this.#pending -= bytes.length;
        this.session.touch();
      }
    } finally {
      this.#writing = false;
    }
  }

  /**
   * The next write: the first chunk queued, joined with those after it up
   * to {@linkcode JOIN_MAX} bytes.
   */
  #take(): Uint8Array {
    const queue = this.#queue;
    const first = this.#head;
    let end = first + 1;
    let size = queue[first]!.length;
    while (end < queue.length && size + queue[end]!.length <= JOIN_MAX) {
      size += queue[end++]!.length;
    }
    let bytes = queue[first]!;
    if (end - first > 1) {
      bytes = new Uint8Array(size);
      let at = 0;
      for (let i = first; i < end; i++) {
        bytes.set(queue[i]!, at);
        at += queue[i]!.length;
      }
    }
    if (end === queue.length) {
      this.#queue = [];
      this.#head = 0;
    } else {
      // Written chunks are let go of; the list is shortened once they are
      // half of it, so taking stays O(1) a chunk.
      queue.fill(EMPTY, first, end);
      this.#head = end;
      if (end * 2 > queue.length) {
        this.#queue = queue.slice(end);
        this.#head = 0;
      }
    }
    return bytes;
  }

  /**
   * Waits for the queue.
   *
   * @returns When everything queued so far was written (or failed).
   */
  flush(): Promise<void> {
    return this.#writer;
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
