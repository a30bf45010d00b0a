/**
 * Reading a JetStream vault: the whole stream, in stream order, into a local
 * directory vault (its records through `apply.ts`, the code every front door
 * applies them with; each source's checkpoint log from `ckpt.<srcid>`; each
 * front door's seal log from `seal.<doorid>` under `doors/<doorid>/seals/`),
 * so `vault ls / cat / verify / proof / checkpoint` then run the directory
 * code on it, and `vault export` is exactly this.
 *
 * The stream is read, never trusted: a message that does not continue its
 * source (a foreign writer with moat's credentials publishing out of order,
 * a duplicate, a malformed body), a second meta message, records before the
 * meta, a message on an unknown subject or a seal that is not a seal record
 * is skipped and kept as a problem in `stream.json`, which `vault verify`
 * reports as damage. What a well-formed forgery that does continue a source
 * looks like, and what catches it, is in docs/SECURITY.md.
 *
 * @module
 */

import { randomBytes } from "node:crypto";
import {
  appendFile,
  readdir,
  readFile,
  rename,
  rm,
  writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { StreamInfo } from "@nats-io/jetstream";
import { ExitCode, MoatError } from "../../errors.ts";
import {
  checkRecord,
  encodeSegmentHeader,
  getU64,
  segmentName,
} from "../../segment/codec.ts";
import { makeDir } from "../../segment/fs.ts";
import { CHECKPOINTS_FILE } from "../_checkpoints.ts";
import { sourceDirName, sourceLabel } from "../_key.ts";
import type { SourceKey } from "../_key.ts";
import {
  readVaultInfo,
  SEAL_KIND,
  SEAL_MAGIC,
  SEALS_DIR,
  writeVaultInfo,
} from "../_seal.ts";
import { openVault } from "../store.ts";
import type { Vault } from "../store.ts";
import { STREAM_FILE } from "../_stream_file.ts";
import type { StreamFile, StreamProblem } from "../_stream_file.ts";
import { DOORS_DIR } from "../_verify_doors.ts";
import { prepareLocalCopy, SourceApplier } from "./apply.ts";
import { decodeMeta, isSourceId, sourceId, subjectsOf } from "./codec.ts";
import type { StreamMeta } from "./codec.ts";
import { connectNats } from "./connect.ts";
import type { NatsConnectOptions } from "./connect.ts";
import { _unavailable, checkStreamConfig } from "./stream.ts";

/** A source's checkpoints from the stream, while they are read. */
const STREAM_CHECKPOINTS = "checkpoints.stream";
/** A front door id in a subject: 1 to 64 letters, digits, `_` or `-`. */
const DOOR_ID = /^[A-Za-z0-9_-]{1,64}$/;
/** Skipped messages kept in `stream.json`; the rest are counted. */
const MAX_PROBLEMS = 1000;
/** Checkpoints of a source held back until its first record arrives. */
const MAX_EARLY_CHECKPOINTS = 1024;

/** Options for {@linkcode materializeStream}. */
export interface MaterializeOptions extends NatsConnectOptions {
  /** The stream's name. @default {"MOAT"} */
  stream?: string;
  /** The directory to fill: missing or empty. */
  dir: string;
  /** Milliseconds a JetStream request, or a wait for the next message, may take. @default {10000} */
  timeoutMs?: number;
}

/**
 * Reads the whole stream (as far as it reached when the read began) into
 * `dir`, a new directory vault with the stream's vault id and checkpoint
 * key. The copy holds no signing key: `moat serve` cannot open it (it
 * would refuse the missing `checkpoint.key`), and nothing signs in its
 * name.
 *
 * @param options Cluster, stream, target directory.
 * @returns What `DIR/stream.json` now holds.
 * @throws {MoatError} `ERR_CONNECT` when the cluster does not answer or the
 * stream is missing; `ERR_USAGE` for a `dir` that is not empty;
 * `ERR_CORRUPT` for a stream without a (well-formed) meta message.
 */
export async function materializeStream(
  options: MaterializeOptions,
): Promise<StreamFile> {
  const name = options.stream ?? "MOAT";
  const subjects = subjectsOf(name);
  const timeout = options.timeoutMs ?? 10_000;
  // The copy holds every record: readable by its owner only.
  await makeDir(options.dir, 0o700);
  const present = await readdir(options.dir);
  // A directory this read filled before (`--cache`) is brought up to date.
  const before = present.length > 0
    ? await _previousRead(options.dir, name)
    : undefined;
  const nc = await connectNats({ ...options, name: "moat vault" });
  try {
    const jsm = await jetstreamManager(nc, { checkAPI: false, timeout });
    const js = jetstream(nc, { timeout });
    let info: StreamInfo;
    try {
      info = await jsm.streams.info(name);
    } catch (error) {
      throw _unavailable(`Cannot read stream "${name}"`, error);
    }
    let unprotected: string | undefined;
    try {
      checkStreamConfig(info.config, subjects);
    } catch (error) {
      unprotected = (error as Error).message;
    }
    const lastSeq = info.state.last_seq;
    const firstSeq = info.state.first_seq;

    // The meta comes first: every chain is bound to its vault id.
    let meta: StreamMeta | undefined;
    let metaSeq = 0;
    try {
      const m = await jsm.streams.getMessage(name, {
        seq: 1,
        next_by_subj: subjects.meta,
      } as unknown as { seq: number });
      if (m !== null) {
        meta = decodeMeta(m.data);
        metaSeq = m.seq;
      }
    } catch (error) {
      if (error instanceof SyntaxError) {
        throw new MoatError(
          "ERR_CORRUPT",
          `Stream "${name}": ${error.message}`,
        );
      }
      if ((error as { code?: number }).code !== 10037) {
        throw _unavailable(`Cannot read stream "${name}"`, error);
      }
    }
    if (meta === undefined) {
      throw new MoatError(
        "ERR_CORRUPT",
        `Stream "${name}" holds no vault (no message on ${subjects.meta}): no front door has written to it`,
      );
    }
    if (before !== undefined) {
      // What was read once cannot go: a stream that lost it was deleted
      // and made again, or rolled back.
      if (
        before.meta.vaultId !== meta.vaultId ||
        before.meta.checkpointKey !== meta.checkpointKey
      ) {
        throw new MoatError(
          "ERR_INTEGRITY",
          `Stream "${name}" now holds vault ${meta.vaultId}, but "${options.dir}" read vault ${before.meta.vaultId} from it: the stream was deleted and made again`,
          ExitCode.Integrity,
        );
      }
      if (before.created !== undefined && before.created !== info.created) {
        throw new MoatError(
          "ERR_INTEGRITY",
          `Stream "${name}" was created at ${info.created}, but "${options.dir}" read the stream created at ${before.created}: it was deleted and made again`,
          ExitCode.Integrity,
        );
      }
      if (lastSeq < before.lastSeq) {
        throw new MoatError(
          "ERR_INTEGRITY",
          `Stream "${name}" ends at message ${lastSeq}, but "${options.dir}" read it to message ${before.lastSeq}: messages were removed (the stream deleted and made again, or rolled back)`,
          ExitCode.Integrity,
        );
      }
      await _reopenCopy(options.dir);
    }

    await prepareLocalCopy(options.dir, meta, { signs: false });
    const vault = await openVault(options.dir, { sealIntervalMs: 0 });
    const reader = new _Reader(options.dir, vault, subjects.prefix, metaSeq);
    if (before !== undefined) await reader.resume(before);
    const { problems, keys, early, doors } = reader;
    let messages = before?.messages ?? 0;
    const from = (before?.lastSeq ?? 0) + 1;
    try {
      if (lastSeq >= Math.max(firstSeq, from) && lastSeq > 0) {
        const consumer = await js.consumers.get(name, {
          filter_subjects: subjects.all,
          ...(from > 1
            ? {
              deliver_policy: DeliverPolicy.StartSequence,
              opt_start_seq: from,
            }
            : { deliver_policy: DeliverPolicy.All }),
        });
        const iter = await consumer.consume({
          max_messages: 256,
          expires: timeout,
        });
        // The client reconnects and re-creates the consumer forever: a
        // cluster that stops answering mid-read ends the read instead.
        let stalled = false;
        let watchdog = setTimeout(function stall() {
          stalled = true;
          void iter.close();
        }, 3 * timeout);
        try {
          for await (const m of iter) {
            clearTimeout(watchdog);
            watchdog = setTimeout(() => {
              stalled = true;
              void iter.close();
            }, 3 * timeout);
            const seq = m.seq;
            messages++;
            const time = Math.floor(m.info.timestampNanos / 1_000_000);
            await reader.dispatch(m.subject, seq, m.data, time);
            // As far as the stream reached when the read began (doors may
            // be writing meanwhile), or all there is.
            if (seq >= lastSeq || m.info.pending === 0) break;
          }
        } finally {
          clearTimeout(watchdog);
          await iter.close();
        }
        if (stalled) {
          throw new MoatError(
            "ERR_CONNECT",
            `Stream "${name}" stopped answering after ${messages} of its messages (nothing for ${
              Math.round(3 * timeout / 1000)
            } s)`,
          );
        }
      }
    } finally {
      await vault.close();
    }

    // Summaries after the skipped messages (not kept for the next read).
    const summaries: StreamProblem[] = [];
    if (reader.moreProblems > 0) {
      summaries.push({
        message:
          `${reader.moreProblems} more messages skipped (only the first ${MAX_PROBLEMS} are listed)`,
      });
    }
    // Checkpoints of sources with no record: nothing they could check.
    for (const [srcid, list] of early) {
      summaries.push({
        message:
          `${list.length} checkpoint(s) of source ${srcid}, which has no record in the stream`,
      });
    }

    // Each source's checkpoint log is the stream's, and only that: the copy
    // signed its own at close, with a key nobody pins.
    for (const key of keys.values()) {
      const dir = join(options.dir, "sources", sourceDirName(key));
      await rm(join(dir, CHECKPOINTS_FILE), { force: true });
      await rename(join(dir, STREAM_CHECKPOINTS), join(dir, CHECKPOINTS_FILE))
        .catch((error) => {
          if ((error as { code?: string }).code !== "ENOENT") throw error;
        });
    }
    // The copy names the stream's checkpoint key; it holds none to sign with.
    const vaultInfo = await readVaultInfo(options.dir);
    await writeVaultInfo(options.dir, {
      ...vaultInfo!,
      checkpointKey: meta.checkpointKey,
    });
    await rm(join(options.dir, "checkpoint.key"), { force: true });

    const file: StreamFile = {
      version: 1,
      stream: name,
      created: info.created,
      meta,
      lastSeq,
      messages,
      doors: Object.fromEntries(
        [...doors].map(([id, d]) => [id, d.seals]),
      ),
      ...(unprotected !== undefined && { unprotected }),
      problems: [...problems, ...summaries],
      read: {
        sources: reader.streamSeqs(),
        skipped: problems,
        more: reader.moreProblems,
      },
    };
    await writeFile(
      join(options.dir, STREAM_FILE),
      JSON.stringify(file, null, 2) + "\n",
    );
    return file;
  } finally {
    await nc.close().catch(() => {});
  }
}

/** The record of an earlier read into `dir`, which must be of `stream`. */
async function _previousRead(
  dir: string,
  stream: string,
): Promise<StreamFile> {
  let before: StreamFile;
  try {
    before = JSON.parse(await readFile(join(dir, STREAM_FILE), "utf8"));
  } catch {
    throw new MoatError(
      "ERR_USAGE",
      `Cannot read a stream into "${dir}": the directory is not empty, and no earlier read of a stream filled it`,
    );
  }
  if (before?.version !== 1 || before.stream !== stream || !before.read) {
    throw new MoatError(
      "ERR_USAGE",
      `"${dir}" holds a copy of stream "${before?.stream}", not of "${stream}"`,
    );
  }
  return before;
}

/**
 * Makes an earlier copy writable again: the checkpoint logs set aside (the
 * stream's lines go on after them), and no checkpoint key named, so the
 * copy opens with a key of its own that signs nothing kept.
 */
async function _reopenCopy(dir: string): Promise<void> {
  const sources = join(dir, "sources");
  for (const id of await readdir(sources).catch(() => [] as string[])) {
    if (id.startsWith(".")) continue;
    await rename(
      join(sources, id, CHECKPOINTS_FILE),
      join(sources, id, STREAM_CHECKPOINTS),
    ).catch((error) => {
      if ((error as { code?: string }).code !== "ENOENT") throw error;
    });
  }
  const info = await readVaultInfo(dir);
  if (info !== undefined) {
    const { checkpointKey: _named, ...rest } = info;
    await writeVaultInfo(dir, rest);
  }
}

/**
 * A fresh temporary directory name beside `parent` for a read that keeps
 * nothing (`vault ls nats://…` without `--cache`).
 *
 * @param parent The parent directory (the system's temp dir).
 * @returns A path that does not exist yet.
 */
export function tempCopyPath(parent: string): string {
  return join(parent, `moat-nats-${randomBytes(8).toString("hex")}`);
}

/** Dispatches the stream's messages to the local copy, keeping problems. */
class _Reader {
  readonly #dir: string;
  readonly #vault: Vault;
  readonly #prefix: string;
  readonly #metaSeq: number;
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

  constructor(dir: string, vault: Vault, prefix: string, metaSeq: number) {
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
        new SourceApplier(this.#vault, id, { streamSeq: seqs[id] ?? 0 }),
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
        applier = new SourceApplier(this.#vault, id);
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
