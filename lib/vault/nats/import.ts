/**
 * `moat vault import DIR nats://…`: a directory vault's records, checkpoints
 * and seals into a JetStream stream, in the formats a front door publishes
 * (docs/VAULT.md, "JetStream vault"), so the stream then reads back
 * (`vault export`) as the same vault: the same id, chains, trees,
 * checkpoints, and the directory's seal log as the seals of one front door.
 *
 * It resumes: per source it starts after the last record the stream holds,
 * and it publishes only checkpoints and seals the stream does not hold yet.
 * Every record publish names the subject's last sequence, as a door's does,
 * so an import never interleaves with a door writing the same source.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { MoatError } from "../../errors.ts";
import { parseSegmentName, scanSegment } from "../../segment/codec.ts";
import { readCheckpointLog } from "../_checkpoints.ts";
import { recordBatch } from "../_format.ts";
import { readVaultInfo, SEAL_KIND, SEAL_MAGIC, SEALS_DIR } from "../_seal.ts";
import { listSources, readRecords } from "../read.ts";
import { sourceLabel } from "../_key.ts";
import type { SourceKey } from "../_key.ts";
import {
  decodeRecordMessage,
  DEFAULT_MAX_MESSAGE_BYTES,
  encodeRecordMessage,
  encodeRecordSection,
  FORMAT_VERSION,
  recordMessageBytes,
  recordMsgId,
  sourceId,
} from "./codec.ts";
import type { RecordKey } from "./codec.ts";
import { loadRecordKeys } from "./apply.ts";
import { connectNats } from "./connect.ts";
import type { NatsConnectOptions } from "./connect.ts";
import {
  _unavailable,
  lastMessage,
  openStream,
  streamMeta,
  WRONG_LAST_SEQUENCE,
} from "./stream.ts";
import type { OpenStream, StreamOptions } from "./stream.ts";

/** Options for {@linkcode importVault}. */
export interface ImportOptions extends NatsConnectOptions, StreamOptions {
  /** The directory vault to read. */
  dir: string;
  /** Most body bytes per record message. @default {1040384} */
  maxMessageBytes?: number;
}

/** What an import published. */
export interface ImportReport {
  /** Sources read. */
  sources: number;
  /** Records published (records the stream held already are not counted). */
  records: number;
  /** Record messages published. */
  messages: number;
  /** Checkpoints published. */
  checkpoints: number;
  /** Seals published, and the door id they went under (if the vault is sealed). */
  seals: number;
  door?: string;
}

/**
 * The id a directory's seal log is published under: 32 hex digits of
 * SHA-256 over its first seal record (each door's seal 1 is its own, so
 * the id names one key chain). A door uses the same rule.
 *
 * @param seal1 The seal record of epoch 1.
 * @returns The door id.
 */
export function doorIdOf(seal1: Uint8Array): string {
  return createHash("sha256").update(seal1).digest("hex").slice(0, 32);
}

/**
 * Imports a directory vault into a stream.
 *
 * @param options Cluster, stream, directory.
 * @returns What was published.
 * @throws {MoatError} `ERR_CHECKPOINT` when the stream holds another vault;
 * `ERR_USAGE` for a vault without a checkpoint key or a source whose first
 * records were pruned; `ERR_CONNECT` when the cluster does not answer or
 * another writer wrote a source meanwhile.
 */
export async function importVault(
  options: ImportOptions,
): Promise<ImportReport> {
  const info = await readVaultInfo(options.dir);
  if (info === undefined) {
    throw new MoatError(
      "ERR_NOT_VAULT",
      `"${options.dir}" is not a moat vault (no vault.json)`,
    );
  }
  if (info.checkpointKey === undefined) {
    throw new MoatError(
      "ERR_USAGE",
      `The vault "${options.dir}" has no checkpoint key yet: open it once with moat serve, then import`,
    );
  }
  const nc = await connectNats({ ...options, name: "moat vault import" });
  try {
    const stream = await openStream(nc, options);
    const mine = {
      format: FORMAT_VERSION,
      vaultId: info.id.toHex(),
      checkpointKey: info.checkpointKey,
    };
    const meta = await streamMeta(stream, mine);
    if (
      meta?.vaultId !== mine.vaultId ||
      meta.checkpointKey !== mine.checkpointKey
    ) {
      throw new MoatError(
        "ERR_CHECKPOINT",
        `Stream "${stream.name}" holds vault ${meta?.vaultId}, not vault ${mine.vaultId}: import into another stream (--stream)`,
      );
    }
    const keys = await loadRecordKeys(options.dir, meta);
    const report: ImportReport = {
      sources: 0,
      records: 0,
      messages: 0,
      checkpoints: 0,
      seals: 0,
    };
    const max = Math.min(
      options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
      (nc.info?.max_payload ?? 1024 * 1024) - 8 * 1024,
    );
    for (const s of await listSources(options.dir)) {
      const key: SourceKey = s.identity === undefined
        ? { peer: s.peer, name: s.name }
        : { peer: s.peer, name: s.name, identity: s.identity };
      report.sources++;
      await _importSource(
        stream,
        options.dir,
        key,
        s.firstSeq,
        max,
        report,
        keys,
      );
      await _importCheckpoints(
        stream,
        join(options.dir, "sources", s.id),
        key,
        report,
      );
    }
    const sealed = await publishSeals(stream, options.dir);
    report.seals = sealed.seals;
    if (sealed.door !== undefined) report.door = sealed.door;
    return report;
  } finally {
    await nc.close().catch(() => {});
  }
}

async function _importSource(
  stream: OpenStream,
  dir: string,
  key: SourceKey,
  firstSeq: number,
  max: number,
  report: ImportReport,
  keys: { sign: RecordKey; check: RecordKey },
): Promise<void> {
  const srcid = sourceId(key);
  const subject = stream.subjects.rec(srcid);
  const last = await lastMessage(stream, subject);
  let held = 0;
  let subjectSeq = 0;
  if (last !== undefined) {
    try {
      held = decodeRecordMessage(last.data, srcid, keys.check).lastSeq;
    } catch (error) {
      throw new MoatError(
        "ERR_CORRUPT",
        `Stream message ${last.seq}: ${(error as Error).message}`,
      );
    }
    subjectSeq = last.seq;
  }
  if (firstSeq > held + 1) {
    throw new MoatError(
      "ERR_USAGE",
      `Source ${sourceLabel(key)}: records ${held + 1} to ${
        firstSeq - 1
      } were pruned from "${dir}"; a stream holds every record from 1`,
    );
  }
  let sections: Uint8Array[] = [];
  let bytes = 0;
  let first = 0;
  let count = 0;
  let run: { seq: number; ts: number; line: Uint8Array; partial: boolean }[] =
    [];
  let runRecvTs = 0;
  const closeRun = () => {
    if (run.length === 0) return;
    const section = encodeRecordSection(recordBatch(run), runRecvTs);
    sections.push(section);
    bytes += section.length;
    run = [];
  };
  const flush = async () => {
    closeRun();
    if (count === 0) return;
    const body = encodeRecordMessage(
      key,
      first,
      count,
      sections,
      keys.sign,
    );
    const h = natsHeaders();
    h.set("Nats-Msg-Id", recordMsgId(srcid, first, first + count - 1));
    try {
      const ack = await stream.js.publish(subject, body, {
        headers: h,
        expect: { lastSubjectSequence: subjectSeq },
      });
      subjectSeq = ack.seq;
    } catch (error) {
      if ((error as { code?: number }).code === WRONG_LAST_SEQUENCE) {
        throw new MoatError(
          "ERR_CONNECT",
          `Source ${
            sourceLabel(key)
          }: another writer added to it during the import; run the import again to continue after it`,
        );
      }
      throw _unavailable(`Cannot publish to ${subject}`, error);
    }
    report.messages++;
    report.records += count;
    sections = [];
    bytes = 0;
    count = 0;
  };
  for await (
    const r of readRecords(dir, { source: sourceLabel(key) })
  ) {
    if (r.seq <= held) continue;
    const size = 21 + r.line.length;
    if (
      count > 0 && recordMessageBytes(key, bytes + _runBytes(run) + size) > max
    ) {
      await flush();
    }
    if (count === 0) first = r.seq;
    if (run.length > 0 && r.recvTs !== runRecvTs) closeRun();
    if (run.length === 0) runRecvTs = r.recvTs;
    run.push({ seq: r.seq, ts: r.ts, line: r.line, partial: r.partial });
    count++;
  }
  await flush();
}

function _runBytes(run: readonly { line: Uint8Array }[]): number {
  let n = 0;
  for (const r of run) n += 21 + r.line.length;
  return n;
}

async function _importCheckpoints(
  stream: OpenStream,
  sourceDir: string,
  key: SourceKey,
  report: ImportReport,
): Promise<void> {
  const subject = stream.subjects.ckpt(sourceId(key));
  const logged = await readCheckpointLog(sourceDir);
  const last = await lastMessage(stream, subject);
  let from = 0;
  if (last !== undefined) {
    const note = new TextDecoder().decode(last.data);
    const at = logged.findLastIndex((c) => c.note === note);
    // A subject whose last note the log does not hold was written by a
    // door: the log's notes are older, or of another history. Leave it.
    if (at < 0) return;
    from = at + 1;
  }
  for (const c of logged.slice(from)) {
    try {
      await stream.js.publish(subject, new TextEncoder().encode(c.note));
    } catch (error) {
      throw _unavailable(`Cannot publish to ${subject}`, error);
    }
    report.checkpoints++;
  }
}

/**
 * Publishes a directory vault's seal log to `seal.<doorid>`: the seals the
 * subject does not hold yet, in order. What `vault import` does with a
 * directory's seals, and what a front door does with its copy's after each
 * seal.
 *
 * @param stream The stream.
 * @param dir The directory vault.
 * @returns The door id (undefined for a vault without seals) and how many
 * seals were published.
 * @throws {MoatError} `ERR_USAGE` for a seal log that does not start at 1;
 * `ERR_CONNECT` when a publish fails.
 */
export async function publishSeals(
  stream: OpenStream,
  dir: string,
): Promise<{ door?: string; seals: number }> {
  const report: { door?: string; seals: number } = { seals: 0 };
  const sealsDir = join(dir, SEALS_DIR);
  let names: string[];
  try {
    names = (await readdir(sealsDir))
      .filter((n) => parseSegmentName(n) !== undefined).sort();
  } catch (error) {
    if ((error as { code?: string }).code === "ENOENT") return report;
    throw error;
  }
  let subject: string | undefined;
  let published = 0;
  for (const name of names) {
    const bytes = new Uint8Array(await readFile(join(sealsDir, name)));
    const scan = scanSegment(bytes, {
      magic: SEAL_MAGIC,
      kind: SEAL_KIND,
      firstSeq: parseSegmentName(name)!,
    });
    for (const record of scan.records) {
      if (subject === undefined) {
        if (record.seq !== 1) {
          throw new MoatError(
            "ERR_USAGE",
            `The seal log of "${dir}" does not start at seal 1: verify it first (moat vault verify)`,
          );
        }
        report.door = doorIdOf(record.bytes);
        subject = stream.subjects.seal(report.door);
        const last = await lastMessage(stream, subject);
        published = last === undefined ? 0 : _epochOf(last.data);
      }
      if (record.seq <= published) continue;
      try {
        await stream.js.publish(subject, record.bytes);
      } catch (error) {
        throw _unavailable(`Cannot publish to ${subject}`, error);
      }
      published = record.seq;
      report.seals++;
    }
  }
  return report;
}

function _epochOf(record: Uint8Array): number {
  if (record.length < 20) return 0;
  const view = new DataView(record.buffer, record.byteOffset, 20);
  return view.getUint32(12, true) + view.getUint32(16, true) * 2 ** 32;
}
