/**
 * What each message of a JetStream vault's stream becomes in the directory
 * it is read into (`read.ts`): records applied through `apply.ts`,
 * checkpoints into the source's log, seals into the door's seal log, and
 * everything no front door writes skipped and kept as a problem.
 *
 * @module
 */

import { appendFile, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { MoatError } from "../../errors.ts";
import {
  checkRecord,
  encodeSegmentHeader,
  getU64,
  segmentName,
} from "../../segment/codec.ts";
import { makeDir } from "../../segment/fs.ts";
import { sourceDirName, sourceLabel } from "../_key.ts";
import type { SourceKey } from "../_key.ts";
import { SEAL_KIND, SEAL_MAGIC, SEALS_DIR } from "../_seal.ts";
import type { StreamFile, StreamProblem } from "../_stream_file.ts";
import { DOORS_DIR } from "../_verify_doors.ts";
import type { Vault } from "../store.ts";
import { SourceApplier } from "./apply.ts";
import { isSourceId, sourceId } from "./codec.ts";
import type { RecordKey } from "./codec.ts";

/** A source's checkpoints from the stream, while they are read. */
export const STREAM_CHECKPOINTS = "checkpoints.stream";
/** A front door id in a subject: 1 to 64 letters, digits, `_` or `-`. */
const DOOR_ID = /^[A-Za-z0-9_-]{1,64}$/;
/** Skipped messages kept in `stream.json`; the rest are counted. */
export const MAX_PROBLEMS = 1000;
/** Checkpoints of a source held back until its first record arrives. */
const MAX_EARLY_CHECKPOINTS = 1024;

/** Dispatches the stream's messages to the local copy, keeping problems. */
export class StreamReader {
  readonly #dir: string;
  readonly #vault: Vault;
  readonly #prefix: string;
  readonly #metaSeq: number;
  readonly #check: RecordKey;
  readonly #appliers = new Map<string, SourceApplier>();
  /** Messages skipped (the first {@linkcode MAX_PROBLEMS}). */
  readonly problems: StreamProblem[] = [];
  /** Messages skipped beyond those. */
  moreProblems = 0;
  /** Each source's key, from its first message applied. */
  readonly keys = new Map<string, SourceKey>();
  /** Checkpoints of sources without a record yet. */
  readonly early = new Map<string, { time: number; note: string }[]>();
  /** Seal logs, per door. */
  readonly doors = new Map<string, { seals: number; file: string }>();

  constructor(
    dir: string,
    vault: Vault,
    prefix: string,
    metaSeq: number,
    check: RecordKey,
  ) {
    this.#check = check;
    this.#dir = dir;
    this.#vault = vault;
    this.#prefix = prefix;
    this.#metaSeq = metaSeq;
  }

  /** Takes up where an earlier read of the same stream into this copy ended. */
  async resume(before: StreamFile): Promise<void> {
    const seqs = before.read?.sources ?? {};
    for (const source of this.#vault.sources()) {
      const id = sourceId(source.key);
      this.keys.set(id, source.key);
      this.#appliers.set(
        id,
        new SourceApplier(this.#vault, id, this.#check, {
          streamSeq: seqs[id] ?? 0,
        }),
      );
    }
    this.problems.push(...(before.read?.skipped ?? []));
    this.moreProblems = before.read?.more ?? 0;
    for (const [door, seals] of Object.entries(before.doors)) {
      if (!DOOR_ID.test(door)) continue;
      const dir = join(this.#dir, DOORS_DIR, door, SEALS_DIR);
      const seg = (await readdir(dir)).find((f) => f.endsWith(".seg"));
      if (seg !== undefined) {
        this.doors.set(door, { seals, file: join(dir, seg) });
      }
    }
  }

  /** Per source id, the stream sequence of its last message applied. */
  streamSeqs(): Record<string, number> {
    return Object.fromEntries(
      [...this.#appliers].map(([id, a]) => [id, a.streamSeq]),
    );
  }

  #skip(streamSeq: number, message: string, source?: string): void {
    // Anyone with moat's credentials can publish junk: keep the first ones.
    if (this.problems.length >= MAX_PROBLEMS) {
      this.moreProblems++;
      return;
    }
    this.problems.push({
      message: `Stream message ${streamSeq}: ${message}`,
      streamSeq,
      ...(source !== undefined && { source }),
    });
  }

  async dispatch(
    subject: string,
    seq: number,
    data: Uint8Array,
    time: number,
  ): Promise<void> {
    if (!subject.startsWith(this.#prefix + ".")) {
      return this.#skip(seq, `unknown subject ${subject}`);
    }
    const rest = subject.slice(this.#prefix.length + 1);
    if (rest === "meta") {
      if (seq === this.#metaSeq) return;
      return this.#skip(
        seq,
        "a second meta message (the first one, message " + this.#metaSeq +
          ", holds)",
      );
    }
    const dot = rest.indexOf(".");
    const kind = rest.slice(0, dot);
    const id = rest.slice(dot + 1);
    if (kind === "rec" && isSourceId(id)) {
      let applier = this.#appliers.get(id);
      if (applier === undefined) {
        applier = new SourceApplier(this.#vault, id, this.#check);
        this.#appliers.set(id, applier);
      }
      try {
        const msg = await applier.apply(seq, data);
        if (!this.keys.has(id)) {
          this.keys.set(id, msg.key);
          const held = this.early.get(id);
          this.early.delete(id);
          for (const c of held ?? []) await this.#logCheckpoint(msg.key, c);
        }
      } catch (error) {
        if ((error as MoatError).code !== "ERR_CORRUPT") throw error;
        const key = this.keys.get(id);
        this.#skip(
          seq,
          `skipped: ${(error as Error).message}`,
          key === undefined ? `source ${id}` : sourceLabel(key),
        );
      }
      return;
    }
    if (kind === "ckpt" && isSourceId(id)) {
      const note = new TextDecoder().decode(data);
      const key = this.keys.get(id);
      if (key !== undefined) {
        return await this.#logCheckpoint(key, { time, note });
      }
      const held = this.early.get(id) ?? [];
      if (held.length >= MAX_EARLY_CHECKPOINTS) {
        return this.#skip(
          seq,
          `too many checkpoints before any record of ${id}`,
        );
      }
      held.push({ time, note });
      this.early.set(id, held);
      return;
    }
    if (kind === "seal" && DOOR_ID.test(id)) {
      return await this.#addSeal(id, seq, data);
    }
    return this.#skip(seq, `unknown subject ${subject}`);
  }

  async #logCheckpoint(
    key: SourceKey,
    c: { time: number; note: string },
  ): Promise<void> {
    const file = join(
      this.#dir,
      "sources",
      sourceDirName(key),
      STREAM_CHECKPOINTS,
    );
    await appendFile(
      file,
      JSON.stringify({ time: c.time, note: c.note }) + "\n",
    );
  }

  /**
   * Appends a seal record to the door's seal log as published: the log's
   * own checks (`verify`) judge it. Only its framing is checked here, so
   * that one malformed message cannot hide the seals after it.
   */
  async #addSeal(
    door: string,
    seq: number,
    data: Uint8Array,
  ): Promise<void> {
    if (data.length < 20) {
      return this.#skip(seq, `seal of door ${door} is short`);
    }
    const epoch = getU64(
      new DataView(data.buffer, data.byteOffset, data.byteLength),
      12,
    );
    if (
      checkRecord(data, 0, { kind: SEAL_KIND, seq: epoch }) !== data.length
    ) {
      return this.#skip(
        seq,
        `the message on seal.${door} is not a seal record`,
      );
    }
    let d = this.doors.get(door);
    if (d === undefined) {
      const dir = join(this.#dir, DOORS_DIR, door, SEALS_DIR);
      await makeDir(dir);
      // One segment per door, named after the first epoch published.
      const file = join(dir, segmentName(epoch));
      await writeFile(file, encodeSegmentHeader(SEAL_MAGIC, epoch));
      d = { seals: 0, file };
      this.doors.set(door, d);
    }
    await appendFile(d.file, data);
    d.seals++;
  }
}
