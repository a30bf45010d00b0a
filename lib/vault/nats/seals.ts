/**
 * A front door's seals into the stream: every seal record its local copy's
 * seal log holds (the directory vault's forward-secure chain, its own key),
 * published as written to `seal.<doorid>`, oldest first, each once (its
 * `Nats-Msg-Id` is `<doorid>:seal:<epoch>`). The door id is the one
 * `vault import` uses (`doorIdOf` in `import.ts`: SHA-256 over the door's
 * seal 1), so a directory imported and then served as a door's copy goes on
 * under the same subject. Readers rebuild each door's seal log from them
 * (`read.ts`), and `vault verify` checks each with that door's key.
 *
 * @module
 */

import { join } from "node:path";
import { getU64 } from "../../segment/codec.ts";
import { listSegments, readSegment } from "../../segment/scanner.ts";
import { doorIdOf } from "./import.ts";
import { SEAL_KIND, SEAL_MAGIC, SEALS_DIR } from "../_seal.ts";
import { lastMessage } from "./stream.ts";
import type { OpenStream } from "./stream.ts";

/** Publishes a door's new seals; one run at a time, never rejects. */
export class SealPublisher {
  readonly #stream: OpenStream;
  readonly #dir: string;
  /** Known once the door's seal 1 is read. */
  #subject: string | undefined;
  #door: string | undefined;
  readonly #timeoutMs: number;
  readonly #onFailed: (message: string) => void;
  /** The newest epoch known to be in the stream; undefined: not read yet. */
  #published: number | undefined;
  #running: Promise<void> = Promise.resolve();
  #again = false;
  #queued = false;

  constructor(
    stream: OpenStream,
    cache: string,
    options: { timeoutMs: number; onFailed: (message: string) => void },
  ) {
    this.#stream = stream;
    this.#dir = join(cache, SEALS_DIR);
    this.#timeoutMs = options.timeoutMs;
    this.#onFailed = options.onFailed;
  }

  /** Publishes what is new (again after the current run, if one runs). */
  kick(): void {
    if (this.#queued) {
      this.#again = true;
      return;
    }
    this.#queued = true;
    this.#running = this.#running.then(async () => {
      this.#queued = false;
      try {
        await this.#publish();
      } catch (error) {
        this.#onFailed((error as Error).message);
      }
    });
  }

  /** Resolves when no run is pending. */
  async idle(): Promise<void> {
    do {
      this.#again = false;
      await this.#running;
    } while (this.#again || this.#queued);
  }

  async #publish(): Promise<void> {
    const segments = await listSegments(this.#dir);
    if (this.#subject === undefined) {
      const first = segments[0];
      if (first === undefined) return;
      let seal1: Uint8Array | undefined;
      for await (
        const batch of readSegment(first.path, {
          magic: SEAL_MAGIC,
          kind: SEAL_KIND,
          firstSeq: first.firstSeq,
          last: segments.length === 1,
        })
      ) {
        seal1 = batch[0]?.seq === 1 ? batch[0].bytes.slice() : undefined;
        break;
      }
      if (seal1 === undefined) {
        throw new Error(
          `The seal log of "${this.#dir}" does not start at seal 1: its seals are not published (moat vault verify it)`,
        );
      }
      this.#door = doorIdOf(seal1);
      this.#subject = this.#stream.subjects.seal(this.#door);
    }
    const subject = this.#subject;
    if (this.#published === undefined) {
      const last = await lastMessage(this.#stream, subject);
      this.#published = last === undefined ? 0 : getU64(
        new DataView(last.data.buffer, last.data.byteOffset, last.data.length),
        12,
      );
    }
    for (const [i, segment] of segments.entries()) {
      const next = segments[i + 1];
      // A segment whose seals are all published already.
      if (next !== undefined && next.firstSeq <= this.#published + 1) continue;
      for await (
        const batch of readSegment(segment.path, {
          magic: SEAL_MAGIC,
          kind: SEAL_KIND,
          firstSeq: segment.firstSeq,
          last: next === undefined,
        })
      ) {
        for (const record of batch) {
          if (record.seq <= this.#published) continue;
          await this.#stream.js.publish(subject, record.bytes.slice(), {
            msgID: `${this.#door}:seal:${record.seq}`,
            timeout: this.#timeoutMs,
          });
          this.#published = record.seq;
        }
      }
    }
  }
}
