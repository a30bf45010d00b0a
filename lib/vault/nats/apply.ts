/**
 * Applying a JetStream vault's record messages to a local directory vault:
 * the one code path a front door's materialized copy, its catch-up, and
 * every reader (`vault export/cat/verify` on `nats://`) go through. The
 * chain links, trees and seals of the directory vault then follow from the
 * records, exactly as if the door had appended them there.
 *
 * Order is checked, never assumed: within a source each message must
 * continue the last one applied (first sequence = last + 1) and come later
 * in the stream. No NATS client here: callers hand in message bodies.
 *
 * @module
 */

import { MoatError } from "../../errors.ts";
import { DEFAULT_MAX_BATCH_RECORDS } from "../../limits.ts";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import {
  makeDir,
  readTextIfExists,
  writeFileAtomic,
} from "../../segment/fs.ts";
import { CHECKPOINT_KEY_FILE } from "../_checkpoints.ts";
import {
  LOCK_FILE,
  MARKER_FILE,
  MARKER_TEXT,
  SOURCES_DIR,
} from "../_format.ts";
import { sourceLabel } from "../_key.ts";
import type { SourceKey } from "../_key.ts";
import { ensureVaultDir, readVaultInfo, writeVaultInfo } from "../_seal.ts";
import type { Vault } from "../store.ts";
import { decodeRecordMessage, recordVerifier, sliceBatch } from "./codec.ts";
import { parseSigner } from "../../checkpoint.ts";
import type { RecordKey, RecordMessage, StreamMeta } from "./codec.ts";

/** Options for {@linkcode applyRecordMessage}. */
export interface ApplyOptions {
  /**
   * Skip a message whose records the local copy already holds, and the
   * leading records it already holds of one that overlaps (a catch-up that
   * starts before the local copy's end). Off: every message must start
   * exactly after the local copy's last record.
   * @default {false}
   */
  skipApplied?: boolean;
  /** Most records per append to the local vault (its `maxRecordsPerAppend`). @default {4096} */
  maxRecordsPerAppend?: number;
}

/**
 * Appends the records of one decoded message to the local vault, with the
 * receive times the door stamped (one append per run of equal receive
 * times, at most `maxRecordsPerAppend` records each), and waits until they
 * are durable there.
 *
 * @param vault The local directory vault.
 * @param msg The message.
 * @param options Whether records already held are skipped.
 * @returns The source's last sequence number afterwards.
 * @throws {MoatError} `ERR_CORRUPT` (as a rejection) when the message does
 * not continue the local copy: a gap, or (without `skipApplied`) records
 * the copy already holds.
 */
export async function applyRecordMessage(
  vault: Vault,
  msg: RecordMessage,
  options: ApplyOptions = {},
): Promise<number> {
  const source = vault.source(msg.key);
  const have = source.acceptedSeq;
  if (msg.firstSeq > have + 1) {
    throw _order(
      msg.key,
      `a message starts at record ${msg.firstSeq}, but the records before it end at ${have}`,
    );
  }
  if (msg.firstSeq <= have && !options.skipApplied) {
    throw _order(
      msg.key,
      `a message starts at record ${msg.firstSeq}, but record ${have} was already applied`,
    );
  }
  if (msg.lastSeq <= have) return source.lastSeq;
  const max = options.maxRecordsPerAppend ?? DEFAULT_MAX_BATCH_RECORDS;
  let i = have + 1 - msg.firstSeq;
  const count = msg.length;
  let last: Promise<number> = Promise.resolve(have);
  while (i < count) {
    const recvTs = msg.recvTs(i);
    let end = i + 1;
    while (end < count && end - i < max && msg.recvTs(end) === recvTs) end++;
    // The whole message as it is when it is one run (no view per field).
    const run = i === 0 && end === count ? msg : sliceBatch(msg, i, end);
    last = source.append(run, { recvTs });
    i = end;
  }
  // Appends of one source commit in order: the last one resolving means
  // every one did (a failed one rejects the ones after it too).
  return await last;
}

/**
 * Applies the messages of one source's subject in stream order, checking
 * that stream sequence numbers grow and records continue.
 */
export class SourceApplier {
  readonly #vault: Vault;
  readonly #srcid: string;
  readonly #check: RecordKey;
  readonly #options: ApplyOptions;
  #streamSeq: number;

  /**
   * @param vault The local directory vault.
   * @param srcid The source id the subject names (every message's key must
   * hash to it).
   * @param check The vault's checkpoint key and id: a message not signed
   * by them is refused (never applied).
   * @param options As {@linkcode applyRecordMessage}; `streamSeq` is the
   * stream sequence of the last message already applied (0: none).
   */
  constructor(
    vault: Vault,
    srcid: string,
    check: RecordKey,
    options: ApplyOptions & { streamSeq?: number } = {},
  ) {
    this.#vault = vault;
    this.#srcid = srcid;
    this.#check = check;
    this.#options = options;
    this.#streamSeq = options.streamSeq ?? 0;
  }

  /** The stream sequence of the last message applied (0: none). */
  get streamSeq(): number {
    return this.#streamSeq;
  }

  /**
   * Decodes, checks and applies one message of the subject.
   *
   * @param streamSeq The message's stream sequence number.
   * @param body Its body.
   * @returns The message, once its records are durable in the local vault.
   * @throws {MoatError} `ERR_CORRUPT` (as a rejection) for a malformed
   * message, one not signed by the vault's key, one of another source, one out of stream order, or records
   * that do not continue the local copy.
   */
  async apply(streamSeq: number, body: Uint8Array): Promise<RecordMessage> {
    if (streamSeq <= this.#streamSeq) {
      throw new MoatError(
        "ERR_CORRUPT",
        `Stream message ${streamSeq} of source ${this.#srcid} arrived after message ${this.#streamSeq}`,
      );
    }
    let msg: RecordMessage;
    try {
      msg = decodeRecordMessage(body, this.#srcid, this.#check);
    } catch (error) {
      throw new MoatError(
        "ERR_CORRUPT",
        `Stream message ${streamSeq}: ${(error as Error).message}`,
        undefined,
        { cause: error },
      );
    }
    await applyRecordMessage(this.#vault, msg, this.#options);
    this.#streamSeq = streamSeq;
    return msg;
  }
}

/**
 * Makes `dir` ready to be opened as the local copy of a stream: a new or
 * empty directory becomes a vault with the stream's vault id (so chains
 * match every other copy); an existing vault must have that id, and (when
 * it names one) the stream's checkpoint key.
 *
 * A reader's copy (`signs: false`) does not record the checkpoint key: it
 * holds no private key, and the directory vault makes itself one that signs
 * nothing anyone pins.
 *
 * @param dir The directory.
 * @param meta The stream's meta message.
 * @param options `signs`: the copy is a front door's, which must sign with
 * the stream's checkpoint key (copied there as `checkpoint.key`).
 * @returns When ready.
 * @throws {MoatError} `ERR_NOT_VAULT` for a non-empty directory that is not
 * a vault; `ERR_CHECKPOINT` for a vault of another id or checkpoint key.
 */
export async function prepareLocalCopy(
  dir: string,
  meta: StreamMeta,
  options: { signs?: boolean } = {},
): Promise<void> {
  const signs = options.signs ?? true;
  await makeDir(dir);
  if (await readTextIfExists(join(dir, MARKER_FILE)) === undefined) {
    // A new front door's directory may already hold the vault's
    // checkpoint key, copied from the first door: it becomes the vault.
    const entries = (await readdir(dir)).filter((e) =>
      e !== LOCK_FILE && e !== CHECKPOINT_KEY_FILE
    );
    if (entries.length === 0) {
      await makeDir(join(dir, SOURCES_DIR));
      await writeFileAtomic(
        join(dir, MARKER_FILE),
        new TextEncoder().encode(MARKER_TEXT),
      );
    }
  }
  await ensureVaultDir(dir);
  const info = await readVaultInfo(dir);
  if (info === undefined) {
    await writeVaultInfo(dir, {
      id: Uint8Array.fromHex(meta.vaultId),
      sealed: false,
      ...(signs && { checkpointKey: meta.checkpointKey }),
    });
    return;
  }
  if (info.id.toHex() !== meta.vaultId) {
    throw new MoatError(
      "ERR_CHECKPOINT",
      `The vault "${dir}" has id ${info.id.toHex()}, but the stream holds vault ${meta.vaultId}: use an empty directory or a copy of this stream`,
    );
  }
  if (!signs) return;
  if (
    info.checkpointKey !== undefined &&
    info.checkpointKey !== meta.checkpointKey
  ) {
    throw new MoatError(
      "ERR_CHECKPOINT",
      `The vault "${dir}" signs with ${info.checkpointKey}, but the stream's checkpoint key is ${meta.checkpointKey}: copy the stream's checkpoint.key there`,
    );
  }
  if (info.checkpointKey === undefined) {
    await writeVaultInfo(dir, { ...info, checkpointKey: meta.checkpointKey });
  }
}

/**
 * The keys a door (or an import) signs record messages with and checks
 * other doors' with: the vault's checkpoint key (in the directory, as every
 * door's `checkpoint.key`) and the stream's vault id.
 *
 * @param dir The directory vault holding `checkpoint.key`.
 * @param meta The stream's meta.
 * @returns The private key to sign with, the public one to check with.
 * @throws {MoatError} `ERR_CHECKPOINT` when the directory holds no key or
 * another one than the stream's.
 */
export async function loadRecordKeys(
  dir: string,
  meta: { vaultId: string; checkpointKey: string },
): Promise<{ sign: RecordKey; check: RecordKey }> {
  const file = join(dir, CHECKPOINT_KEY_FILE);
  const text = await readTextIfExists(file);
  const signer = text === undefined ? undefined : parseSigner(text);
  if (signer?.verifier !== meta.checkpointKey) {
    throw new MoatError(
      "ERR_CHECKPOINT",
      `The vault's "${file}" is not the stream's checkpoint key ${meta.checkpointKey}: copy the first door's checkpoint.key there`,
    );
  }
  return {
    sign: { vaultId: Uint8Array.fromHex(meta.vaultId), key: signer.key },
    check: recordVerifier(meta),
  };
}

function _order(key: SourceKey, what: string): MoatError {
  return new MoatError(
    "ERR_CORRUPT",
    `Stream out of order for source "${sourceLabel(key)}": ${what}`,
  );
}
