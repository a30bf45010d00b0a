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
import { readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { JetStreamClient, StreamInfo } from "@nats-io/jetstream";
import { ExitCode, MoatError } from "../../errors.ts";
import { makeDir } from "../../segment/fs.ts";
import { CHECKPOINTS_FILE } from "../_checkpoints.ts";
import { sourceDirName } from "../_key.ts";
import { readVaultInfo, writeVaultInfo } from "../_seal.ts";
import { openVault } from "../store.ts";
import { STREAM_FILE } from "../_stream_file.ts";
import type { StreamFile, StreamProblem } from "../_stream_file.ts";
import { prepareLocalCopy } from "./apply.ts";
import { MAX_PROBLEMS, STREAM_CHECKPOINTS, StreamReader } from "./_reader.ts";
import { decodeMeta, recordVerifier, subjectsOf } from "./codec.ts";
import type { StreamMeta } from "./codec.ts";
import { connectNats } from "./connect.ts";
import type { NatsConnectOptions } from "./connect.ts";
import { _unavailable, checkStreamConfig } from "./stream.ts";

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
    const reader = new StreamReader(
      options.dir,
      vault,
      subjects.prefix,
      metaSeq,
      recordVerifier(meta),
    );
    if (before !== undefined) await reader.resume(before);
    const { problems, keys, early, doors } = reader;
    let messages = before?.messages ?? 0;
    const from = (before?.lastSeq ?? 0) + 1;
    try {
      let next = Math.max(firstSeq, from);
      const handle = async (m: _Msg) => {
        messages++;
        await reader.dispatch(m.subject, m.seq, m.data, m.time);
        next = m.seq + 1;
      };
      if (lastSeq >= next && lastSeq > 0) {
        const done = await _consume(
          // A consumer placed on a node that is down never answers: give
          // up on it soon, and read on message by message.
          jetstream(nc, { timeout: Math.min(timeout, 2000) }),
          name,
          subjects.all,
          next,
          lastSeq,
          timeout,
          handle,
        );
        // Message by message, needing only the stream's leader: when the
        // consumer could not be made or stopped. (With a node of three
        // down, 2.9.10 places about one ephemeral consumer in three on it,
        // and its creation times out.)
        while (!done && next <= lastSeq) {
          const m = await jsm.streams.getMessage(name, {
            seq: next,
            next_by_subj: subjects.all,
          } as unknown as { seq: number });
          if (m === null || m.seq > lastSeq) break;
          await handle({
            subject: m.subject,
            seq: m.seq,
            data: m.data,
            time: m.time.getTime(),
          });
        }
      }
      // Every tree takes the records read before the copy closes: a tree
      // still catching up at close keeps what it has, and the copy's
      // proofs would lack nodes its stream checkpoints cover (seen once:
      // "holds fewer nodes than its checkpoint of size 280 needs").
      // A tree that cannot catch up (a damaged segment) is verify's to
      // report, not the read's.
      for (const source of vault.sources()) {
        await vault.checkpoint(source.key).catch(() => {});
      }
    } catch (error) {
      // The client's own errors (a timeout, no responders while the stream
      // has no leader) say the cluster is not answering; the copy's and the
      // file system's pass as they are.
      if (
        error instanceof MoatError ||
        typeof (error as { errno?: unknown }).errno === "number"
      ) throw error;
      throw _unavailable(`Cannot read stream "${name}"`, error);
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

/** A message read from the stream. */
interface _Msg {
  subject: string;
  seq: number;
  data: Uint8Array;
  /** Its stream timestamp, ms since the epoch. */
  time: number;
}

/**
 * Reads messages `from` to `last` (those on `filter`) through an ordered
 * consumer, handing each to `handle` in order.
 *
 * @returns True once at `last` or the end; false if the consumer could not
 * be made, failed, or went quiet for three timeouts (the caller reads on
 * message by message from where this stopped). `handle`'s errors are
 * thrown.
 */
async function _consume(
  js: JetStreamClient,
  name: string,
  filter: string,
  from: number,
  last: number,
  timeout: number,
  handle: (m: _Msg) => Promise<void>,
): Promise<boolean> {
  let iter;
  try {
    const consumer = await js.consumers.get(name, {
      filter_subjects: filter,
      ...(from > 1
        ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: from }
        : { deliver_policy: DeliverPolicy.All }),
    });
    iter = await consumer.consume({ max_messages: 256, expires: timeout });
  } catch {
    return false;
  }
  // The client re-creates a consumer that vanished, forever: a consumer
  // that goes quiet ends this instead.
  const arm = () => setTimeout(() => void iter.close(), 3 * timeout);
  let watchdog = arm();
  let failed: { error: unknown } | undefined;
  try {
    for await (const m of iter) {
      clearTimeout(watchdog);
      watchdog = arm();
      try {
        await handle({
          subject: m.subject,
          seq: m.seq,
          data: m.data,
          time: Math.floor(m.info.timestampNanos / 1_000_000),
        });
      } catch (error) {
        failed = { error };
        break;
      }
      // As far as the stream reached when the read began (doors may be
      // writing meanwhile), or all there is.
      if (m.seq >= last || m.info.pending === 0) return true;
    }
  } catch {
    return false;
  } finally {
    clearTimeout(watchdog);
    await iter.close();
  }
  if (failed) throw failed.error;
  return false;
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
