/**
 * What a source's Merkle tree keeps beside it, and the vault's checkpoint
 * key: the origin line and extension of its checkpoints, the checkpoint key
 * file, the per-source checkpoint log (one JSON line per checkpoint kept),
 * the tree's metadata, and the tree as a reader sees it at its latest
 * logged checkpoint. Formats: `docs/VAULT.md`, "Merkle trees and
 * checkpoints".
 *
 * @module
 */

import { open, rm } from "node:fs/promises";
import { join } from "node:path";
import { generateKey, openCheckpoint, parseSigner } from "../checkpoint.ts";
import type { Signer, Verifier } from "../checkpoint.ts";
import { MoatError } from "../errors.ts";
import { MerkleLog } from "../merkle.ts";
import { readTextIfExists, writeFileAtomic } from "../segment/fs.ts";
import { _equal } from "./_chain.ts";
import type { SourceKey } from "./_key.ts";
import { nodesForSize, TreeFile } from "./_tree_file.ts";

/** A source's tree nodes. */
export const TREE_FILE = "tree";
/**
 * A source's tree metadata, `{"version": 1, "first": F}`, only for a tree
 * whose first leaf is not record 1 (absent: 1).
 */
export const TREE_META_FILE = "tree.json";
/** A source's checkpoint log: one JSON line per checkpoint kept. */
export const CHECKPOINTS_FILE = "checkpoints";
/** The vault's checkpoint signing key (0600). */
export const CHECKPOINT_KEY_FILE = "checkpoint.key";
/** The extension line naming the first record of a tree that does not start at 1. */
export const FIRST_SEQ_EXTENSION = "moat-first-seq";
/** How much of the end of a checkpoint log is read at open. */
const LOG_TAIL_BYTES = 64 * 1024;

/** A signed checkpoint of one source. */
export interface SignedCheckpoint {
  /** The signed note (C2SP checkpoint). */
  note: string;
  /** Tree size: records covered. */
  size: number;
  /** The tree's root at that size. */
  root: Uint8Array;
}

/** Something a tree did that the operator should hear of. */
export type TreeEvent =
  | { type: "checkpoint_key_created"; verifier: string }
  | { type: "tree_building"; source: SourceKey; records: number }
  | { type: "tree_built"; source: SourceKey; size: number; first: number }
  | {
    type: "tree_rebuilt";
    source: SourceKey;
    reason: string;
  }
  | {
    type: "tree_restarted";
    source: SourceKey;
    first: number;
    reason: string;
  }
  | {
    type: "tree_behind";
    source: SourceKey;
    records: number;
    checkpoint: number;
  }
  | { type: "tree_failed"; source: SourceKey; message: string }
  | { type: "tree_worker_failed"; message: string };

/**
 * The origin line of a source's checkpoints: `moat/<vault id>/<source hash>`,
 * both hex.
 *
 * @param vaultId The vault id.
 * @param sourceHash The source hash.
 * @returns The origin.
 */
export function checkpointOrigin(
  vaultId: Uint8Array,
  sourceHash: Uint8Array,
): string {
  return `moat/${vaultId.toHex()}/${sourceHash.toHex()}`;
}

/**
 * The name of a vault's checkpoint key: `moat/<vault id>`.
 *
 * @param vaultId The vault id.
 * @returns The key name.
 */
export function checkpointKeyName(vaultId: Uint8Array): string {
  return `moat/${vaultId.toHex()}`;
}

/**
 * The extension lines of a tree's checkpoints: none for a tree whose first
 * leaf is record 1, else `moat-first-seq F`.
 *
 * @param first The sequence number of leaf 0.
 * @returns The lines.
 */
export function checkpointExtensions(first: number): string[] {
  return first === 1 ? [] : [`${FIRST_SEQ_EXTENSION} ${first}`];
}

/**
 * The sequence number of leaf 0 a checkpoint names (1 without the
 * extension).
 *
 * @param extensions The checkpoint's extension lines.
 * @returns The first sequence number.
 * @throws {MoatError} `ERR_CHECKPOINT` for a malformed extension.
 */
export function firstSeqOf(extensions: readonly string[] | undefined): number {
  for (const line of extensions ?? []) {
    if (!line.startsWith(FIRST_SEQ_EXTENSION + " ")) continue;
    const text = line.slice(FIRST_SEQ_EXTENSION.length + 1);
    const n = Number(text);
    if (!/^[1-9][0-9]{0,15}$/.test(text) || !Number.isSafeInteger(n)) {
      throw new MoatError("ERR_CHECKPOINT", `bad ${FIRST_SEQ_EXTENSION} line`);
    }
    return n;
  }
  return 1;
}

/**
 * Loads the vault's checkpoint key, or makes one: a vault that has none (a
 * new one, or one from before trees) gets a new key, written 0600 as
 * `checkpoint.key`, its verifier recorded by the caller in `vault.json`. A
 * key file that is missing while `vault.json` names a verifier, or that
 * does not match it, is refused: a new key would make every shipper and
 * witness that pinned the old one report a fork.
 *
 * @param root The vault directory (its lock is held).
 * @param vaultId The vault id (names the key).
 * @param recorded The verifier `vault.json` names, if any.
 * @returns The signer, and whether it was just made.
 * @throws {MoatError} `ERR_CHECKPOINT` for a missing, malformed or
 * mismatched key.
 */
export async function loadCheckpointKey(
  root: string,
  vaultId: Uint8Array,
  recorded: string | undefined,
): Promise<{ signer: Signer; created: boolean }> {
  const file = join(root, CHECKPOINT_KEY_FILE);
  const text = await readTextIfExists(file);
  if (text === undefined) {
    if (recorded !== undefined) {
      throw new MoatError(
        "ERR_CHECKPOINT",
        `The checkpoint key "${file}" is missing, but vault.json names ${recorded}: restore it (a new key would make every shipper and witness holding a checkpoint report a fork)`,
      );
    }
    const made = generateKey(checkpointKeyName(vaultId));
    await writeFileAtomic(file, new TextEncoder().encode(made.signer + "\n"));
    return { signer: parseSigner(made.signer), created: true };
  }
  let signer: Signer;
  try {
    signer = parseSigner(text);
  } catch (error) {
    throw new MoatError(
      "ERR_CHECKPOINT",
      `The checkpoint key "${file}" is malformed: ${(error as Error).message}`,
    );
  }
  if (recorded !== undefined && recorded !== signer.verifier) {
    throw new MoatError(
      "ERR_CHECKPOINT",
      `The checkpoint key "${file}" does not match the key vault.json names (${recorded})`,
    );
  }
  return { signer, created: false };
}

/** One entry of a checkpoint log. */
export interface LoggedCheckpoint {
  /** The note as kept (the vault's signature, maybe cosignatures). */
  note: string;
  /** When it was logged, ms since the epoch. */
  time: number;
}

/**
 * Reads a source's checkpoint log. A torn last line (a crash while
 * appending) is skipped.
 *
 * @param dir The source directory.
 * @param options `tail`: read only the last 64 KiB (enough for the latest).
 * @returns The entries, oldest first; empty if there is no log.
 * @throws {MoatError} `ERR_CORRUPT` for a malformed line other than the last.
 */
export async function readCheckpointLog(
  dir: string,
  options: { tail?: boolean } = {},
): Promise<LoggedCheckpoint[]> {
  const file = join(dir, CHECKPOINTS_FILE);
  let text: string;
  if (options.tail) {
    let handle;
    try {
      handle = await open(file, "r");
    } catch (error) {
      if ((error as { code?: string }).code === "ENOENT") return [];
      throw error;
    }
    try {
      const size = (await handle.stat()).size;
      const start = Math.max(0, size - LOG_TAIL_BYTES);
      const buf = new Uint8Array(size - start);
      await handle.read(buf, 0, buf.length, start);
      text = new TextDecoder().decode(buf);
      if (start > 0) text = text.slice(text.indexOf("\n") + 1);
    } finally {
      await handle.close();
    }
  } else {
    const found = await readTextIfExists(file);
    if (found === undefined) return [];
    text = found;
  }
  const lines = text.split("\n");
  const out: LoggedCheckpoint[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (line === "") continue;
    const last = i === lines.length - 1;
    try {
      const parsed = JSON.parse(line);
      if (
        typeof parsed?.note !== "string" || !Number.isSafeInteger(parsed.time)
      ) throw new Error("unexpected fields");
      out.push({ note: parsed.note, time: parsed.time });
    } catch (error) {
      // No newline after it: a torn append.
      if (last) break;
      throw new MoatError(
        "ERR_CORRUPT",
        `Damaged checkpoint log "${file}", line ${i + 1}: ${
          (error as Error).message
        }`,
      );
    }
  }
  return out;
}

/**
 * Appends a note to a source's checkpoint log, without fsync: a line lost
 * in a crash only makes the next open trust the tree from an earlier
 * checkpoint (the tree file is fsync'd before the line is written, so
 * every line on disk is backed by durable nodes).
 *
 * @param dir The source directory.
 * @param note The note.
 * @param time Now, ms since the epoch.
 * @param sync Fsync the log too (cosigned checkpoints: evidence from
 * outside the vault host).
 * @returns When written.
 */
export async function appendCheckpointLog(
  dir: string,
  note: string,
  time: number,
  sync = false,
): Promise<void> {
  const handle = await open(join(dir, CHECKPOINTS_FILE), "a", 0o600);
  try {
    await handle.write(JSON.stringify({ time, note }) + "\n");
    if (sync) await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Reads a tree's metadata.
 *
 * @param dir The source directory.
 * @returns The first sequence number, or undefined without a file.
 * @throws {MoatError} `ERR_CORRUPT` if it is malformed.
 */
export async function readTreeMeta(
  dir: string,
): Promise<{ first: number } | undefined> {
  const file = join(dir, TREE_META_FILE);
  const text = await readTextIfExists(file);
  if (text === undefined) return undefined;
  try {
    const parsed = JSON.parse(text);
    if (
      parsed?.version !== 1 || !Number.isSafeInteger(parsed.first) ||
      parsed.first < 1
    ) throw new Error("unexpected fields");
    return { first: parsed.first };
  } catch (error) {
    throw new MoatError(
      "ERR_CORRUPT",
      `Damaged tree metadata "${file}": ${(error as Error).message}`,
    );
  }
}

/**
 * Writes a tree's metadata (removes it for a tree starting at record 1).
 *
 * @param dir The source directory.
 * @param first The sequence number of leaf 0.
 * @returns When durable.
 */
export async function writeTreeMeta(dir: string, first: number): Promise<void> {
  if (first === 1) {
    await rm(join(dir, TREE_META_FILE), { force: true });
    return;
  }
  await writeFileAtomic(
    join(dir, TREE_META_FILE),
    new TextEncoder().encode(JSON.stringify({ version: 1, first }) + "\n"),
  );
}

/**
 * The tree as a reader sees it on disk (no server needed): the latest
 * logged checkpoint and the tree nodes it covers. For `moat vault
 * checkpoint` and `moat vault proof`.
 *
 * @param dir The source directory.
 * @param verifier The vault's checkpoint verifier.
 * @param origin The source's origin line.
 * @returns The tree at the latest logged checkpoint, or undefined if none
 * was logged.
 */
export async function openLoggedTree(
  dir: string,
  verifier: Verifier,
  origin: string,
): Promise<
  | {
    checkpoint: SignedCheckpoint;
    first: number;
    log: MerkleLog;
    file: TreeFile;
  }
  | undefined
> {
  const logged = await readCheckpointLog(dir, { tail: true });
  for (let i = logged.length - 1; i >= 0; i--) {
    const note = logged[i]!.note;
    let cp;
    try {
      cp = openCheckpoint(note, verifier);
    } catch {
      continue;
    }
    if (cp.origin !== origin) continue;
    const path = join(dir, TREE_FILE);
    const nodes = nodesForSize(cp.size);
    if (TreeFile.nodesOnDisk(path) < nodes) {
      throw new MoatError(
        "ERR_CORRUPT",
        `The Merkle tree "${path}" holds fewer nodes than its checkpoint of size ${cp.size} needs`,
      );
    }
    const file = new TreeFile(path, nodes);
    const log = new MerkleLog(file, cp.size);
    const root = file.reading(() => log.root());
    if (!_equal(root, cp.root)) {
      throw new MoatError(
        "ERR_CORRUPT",
        `The Merkle tree "${path}" does not give the root of its checkpoint of size ${cp.size}`,
      );
    }
    return {
      checkpoint: { note, size: cp.size, root: cp.root },
      first: firstSeqOf(cp.extensions),
      log,
      file,
    };
  }
  return undefined;
}
