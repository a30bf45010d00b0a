/**
 * A front door's seals into the stream: every seal record its local copy's
 * seal log holds (the directory vault's forward-secure chain, its own key),
 * published as written to `seal.<doorid>`, oldest first, each once (its
 * `Nats-Msg-Id` is `<doorid>:seal:<epoch>`). Readers rebuild each door's
 * seal log from them (`read.ts`), and `vault verify` checks each with that
 * door's key.
 *
 * @module
 */

import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { getU64 } from "../../segment/codec.ts";
import { readTextIfExists, writeFileAtomic } from "../../segment/fs.ts";
import { listSegments, readSegment } from "../../segment/scanner.ts";
import { SEAL_KIND, SEAL_MAGIC, SEALS_DIR } from "../_seal.ts";
import { lastMessage } from "./stream.ts";
import type { OpenStream } from "./stream.ts";

/** The file in a door's local copy naming the door in the stream. */
export const DOOR_ID_FILE = "door-id";

/**
 * The door's id (32 hex digits), made at its first start and kept in its
 * local copy: the seal subject of its seal chain.
 *
 * @param cache The local copy.
 * @returns The id.
 */
export async function doorId(cache: string): Promise<string> {
  const file = join(cache, DOOR_ID_FILE);
  const found = (await readTextIfExists(file))?.trim();
  if (found !== undefined && /^[0-9a-f]{32}$/.test(found)) return found;
  const id = randomBytes(16).toString("hex");
  await writeFileAtomic(file, new TextEncoder().encode(id + "\n"));
  return id;
}

/** Publishes a door's new seals; one run at a time, never rejects. */
export class SealPublisher {
  readonly #stream: OpenStream;
  readonly #dir: string;
  readonly #subject: string;
  readonly #door: string;
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
    door: string,
    options: { timeoutMs: number; onFailed: (message: string) => void },
  ) {
    this.#stream = stream;
    this.#dir = join(cache, SEALS_DIR);
    this.#door = door;
    this.#subject = stream.subjects.seal(door);
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
    if (this.#published === undefined) {
      const last = await lastMessage(this.#stream, this.#subject);
      this.#published = last === undefined ? 0 : getU64(
        new DataView(last.data.buffer, last.data.byteOffset, last.data.length),
        12,
      );
    }
    const segments = await listSegments(this.#dir);
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
          await this.#stream.js.publish(this.#subject, record.bytes.slice(), {
            msgID: `${this.#door}:seal:${record.seq}`,
            timeout: this.#timeoutMs,
          });
          this.#published = record.seq;
        }
      }
    }
  }
}
