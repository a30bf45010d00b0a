/**
 * Each source's Merkle tree inside an open vault, its signed checkpoints
 * and its proofs; the vault's checkpoint key; the per-source checkpoint log.
 *
 * The tree holds only durable records: a chunk's leaves are appended once
 * the commit that wrote it is fsync'd (and before its append resolves), so a
 * checkpoint never covers a record that could still be rolled back. Its
 * nodes are written without fsync: at every logged checkpoint the tree file
 * is fsync'd first, so at open the tree is trusted up to the last logged
 * checkpoint (if its stored nodes give that checkpoint's root) and rebuilt
 * from the records after it; a tree ahead of the records (records lost) is
 * cut back and reported. Formats: `docs/VAULT.md`, "Merkle trees and
 * checkpoints".
 *
 * @module
 */

import { open, rm } from "node:fs/promises";
import { join } from "node:path";
import {
  generateKey,
  openCheckpoint,
  parseSigner,
  signCheckpoint,
} from "../checkpoint.ts";
import type { Signer, Verifier } from "../checkpoint.ts";
import { MoatError } from "../errors.ts";
import { leafHash, MerkleLog } from "../merkle.ts";
import { readTextIfExists, writeFileAtomic } from "../segment/fs.ts";
import { readSegment } from "../segment/scanner.ts";
import { _equal } from "./_chain.ts";
import { VAULT_KIND, VAULT_MAGIC } from "./_format.ts";
import { sourceLabel } from "./_key.ts";
import type { SourceKey } from "./_key.ts";
import { _hex } from "./_seal.ts";
import {
  leafHashOfRecord,
  leafOfRecord,
  nodesForSize,
  RecordLocator,
  TreeFile,
} from "./_tree_file.ts";
import type { LocatorSegment } from "./_tree_file.ts";

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
  | { type: "tree_failed"; source: SourceKey; message: string };

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
  return `moat/${_hex(vaultId)}/${_hex(sourceHash)}`;
}

/**
 * The name of a vault's checkpoint key: `moat/<vault id>`.
 *
 * @param vaultId The vault id.
 * @returns The key name.
 */
export function checkpointKeyName(vaultId: Uint8Array): string {
  return `moat/${_hex(vaultId)}`;
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
 * Appends a note to a source's checkpoint log and fsyncs it.
 *
 * @param dir The source directory.
 * @param note The note.
 * @param time Now, ms since the epoch.
 * @returns When durable.
 */
export async function appendCheckpointLog(
  dir: string,
  note: string,
  time: number,
): Promise<void> {
  const handle = await open(join(dir, CHECKPOINTS_FILE), "a", 0o600);
  try {
    await handle.write(JSON.stringify({ time, note }) + "\n");
    await handle.sync();
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

async function writeTreeMeta(dir: string, first: number): Promise<void> {
  if (first === 1) {
    await rm(join(dir, TREE_META_FILE), { force: true });
    return;
  }
  await writeFileAtomic(
    join(dir, TREE_META_FILE),
    new TextEncoder().encode(JSON.stringify({ version: 1, first }) + "\n"),
  );
}

/** What a source's tree needs from its source. */
export interface TreeHost {
  /** The source key. */
  readonly key: SourceKey;
  /** The source directory. */
  readonly dir: string;
  /** The source hash. */
  readonly sourceHash: Uint8Array;
  /** The source's segments, oldest first, with their durable sizes. */
  segments(): readonly LocatorSegment[];
  /** The last durable record's sequence number (0: none). */
  durableSeq(): number;
  /** The oldest record held (durableSeq + 1 if none). */
  firstSeq(): number;
}

/** What every tree of a vault shares. */
export interface TreeContext {
  /** The vault id. */
  vaultId: Uint8Array;
  /** The vault's checkpoint key. */
  signer: Signer;
  /** Its verifier. */
  verifier: Verifier;
  /** The clock. */
  now: () => number;
  /** Told about builds, rebuilds and failures. */
  onEvent?: ((event: TreeEvent) => void) | undefined;
}

/** One source's tree in an open vault. */
export class SourceTree {
  readonly host: TreeHost;
  readonly origin: string;
  #ctx: TreeContext;
  #file: TreeFile;
  #log: MerkleLog;
  #first: number;
  /** True once tree.json holds `first` durably. */
  #metaSaved: boolean;
  #locator = new RecordLocator();
  #signed: SignedCheckpoint | undefined;
  /** Size of the last checkpoint in the log. */
  #logged: number;
  #building: Promise<void> | undefined;
  /** Why the tree cannot catch up (a damaged segment), if it cannot. */
  #failed: Error | undefined;
  /** Report `tree_built` when the running build ends (an upgrade). */
  #announce = false;
  /** Log writes, one at a time. */
  #writes: Promise<unknown> = Promise.resolve();
  /** Set by `stop`: no more building (the vault is closing). */
  #stopped = false;
  #closed = false;

  private constructor(
    host: TreeHost,
    ctx: TreeContext,
    state: {
      file: TreeFile;
      size: number;
      first: number;
      metaSaved: boolean;
      logged: number;
    },
  ) {
    this.host = host;
    this.#ctx = ctx;
    this.origin = checkpointOrigin(ctx.vaultId, host.sourceHash);
    this.#file = state.file;
    this.#first = state.first;
    this.#metaSaved = state.metaSaved;
    this.#logged = state.logged;
    this.#log = new MerkleLog(state.file, state.size);
  }

  /**
   * The tree of a source with nothing on disk yet (a new source).
   *
   * @param host The source.
   * @param ctx The vault's tree context.
   * @returns The empty tree, starting at record 1.
   */
  static fresh(host: TreeHost, ctx: TreeContext): SourceTree {
    const first = host.firstSeq();
    return new SourceTree(host, ctx, {
      file: new TreeFile(join(host.dir, TREE_FILE), 0),
      size: 0,
      first,
      metaSaved: first === 1,
      logged: 0,
    });
  }

  /**
   * Opens a source's tree: trusts it up to the last logged checkpoint whose
   * root its stored nodes reproduce, cuts what follows, and rebuilds from
   * the records in the background. A source without a tree (from before
   * trees) gets one built from its oldest record held.
   *
   * @param host The source (recovered).
   * @param ctx The vault's tree context.
   * @returns The tree (catching up in the background).
   */
  static async open(host: TreeHost, ctx: TreeContext): Promise<SourceTree> {
    const dir = host.dir;
    const path = join(dir, TREE_FILE);
    const report = ctx.onEvent ?? (() => {});
    const meta = await readTreeMeta(dir).catch(() => undefined) ??
      { first: 1 };
    const onDisk = TreeFile.nodesOnDisk(path);
    const origin = checkpointOrigin(ctx.vaultId, host.sourceHash);
    let last: (SignedCheckpoint & { first: number }) | undefined;
    const logged = await readCheckpointLog(dir, { tail: true }).catch(
      () => [],
    );
    for (let i = logged.length - 1; i >= 0 && last === undefined; i--) {
      try {
        const cp = openCheckpoint(logged[i]!.note, ctx.verifier);
        if (cp.origin !== origin) continue;
        last = {
          note: logged[i]!.note,
          size: cp.size,
          root: cp.root,
          first: firstSeqOf(cp.extensions),
        };
      } catch {
        // Not one of ours (or damaged): look further back.
      }
    }
    const heldFirst = host.firstSeq();
    const durable = host.durableSeq();
    const records = durable - heldFirst + 1;
    const file = new TreeFile(path, 0);
    let tree: SourceTree | undefined;
    let reason: string | undefined;
    if (last !== undefined && last.first === meta.first) {
      const nodes = nodesForSize(last.size);
      if (nodes <= onDisk) {
        const trusted = new TreeFile(path, nodes);
        try {
          const candidate = new SourceTree(host, ctx, {
            file: trusted,
            size: last.size,
            first: meta.first,
            metaSaved: true,
            logged: last.size,
          });
          if (_equal(candidate.#log.root(), last.root)) {
            tree = candidate;
            // Nodes after the checkpoint were never fsync'd: rebuild them.
            trusted.truncate(nodes);
          } else {
            reason =
              `its stored nodes do not give the root of its last checkpoint (size ${last.size})`;
          }
        } catch (error) {
          reason = `its file cannot be read (${(error as Error).message})`;
        }
      } else {
        reason =
          `its file holds ${onDisk} nodes, fewer than its last checkpoint (size ${last.size}) needs`;
      }
    } else if (last !== undefined) {
      reason =
        `its metadata (${TREE_META_FILE}) names record ${meta.first} as its first, its last checkpoint ${last.first}`;
    }
    if (tree === undefined) {
      const upgrade = onDisk === 0 && last === undefined;
      let first = last?.first ?? meta.first;
      if (upgrade) {
        // A source from before trees (or a new one whose first nodes were
        // never written): its tree starts at its oldest record held.
        first = heldFirst;
      } else if (heldFirst > first) {
        // Records before heldFirst were pruned: the tree over them cannot
        // be rebuilt. Start anew; holders of earlier checkpoints see a fork.
        report({
          type: "tree_restarted",
          source: host.key,
          first: heldFirst,
          reason: `${reason ?? "it is missing"}, and records ${first} to ${
            heldFirst - 1
          } were pruned: checkpoints given out before do not match the new tree`,
        });
        first = heldFirst;
      } else if (reason !== undefined) {
        report({ type: "tree_rebuilt", source: host.key, reason });
      }
      file.truncate(0);
      tree = new SourceTree(host, ctx, {
        file,
        size: 0,
        first,
        metaSaved: meta.first === first,
        logged: 0,
      });
      if (records > 0 && upgrade) {
        tree.#announce = true;
        report({ type: "tree_building", source: host.key, records });
      }
    } else if (tree.last > durable) {
      // The records end before the tree: they were rolled back or cut.
      report({
        type: "tree_behind",
        source: host.key,
        records: Math.max(0, durable - tree.#first + 1),
        checkpoint: tree.size,
      });
      tree.#cut(Math.max(0, durable - tree.#first + 1));
    }
    if (!tree.#metaSaved && records > 0) {
      await writeTreeMeta(dir, tree.#first);
      tree.#metaSaved = true;
    }
    tree.#catchUp();
    return tree;
  }

  /** Leaves in the tree. */
  get size(): number {
    return this.#log.size;
  }

  /** The sequence number of leaf 0. */
  get first(): number {
    return this.#first;
  }

  /** The sequence number of the last leaf (first − 1 when empty). */
  get last(): number {
    return this.#first + this.#log.size - 1;
  }

  /** Cuts the tree to `size` leaves. */
  #cut(size: number): void {
    this.#file.truncate(nodesForSize(size));
    this.#log = new MerkleLog(this.#file, size);
    if (this.#signed && this.#signed.size > size) this.#signed = undefined;
    this.#logged = Math.min(this.#logged, size);
  }

  /**
   * Adds the leaves of records that just became durable (called before
   * their append resolves). Records the tree is not ready for (it is still
   * catching up) are left to the builder. Never throws.
   *
   * @param firstSeq The first record's sequence number.
   * @param bytes The records, encoded back to back.
   */
  appendDurable(firstSeq: number, bytes: Uint8Array): void {
    if (this.#closed) return;
    if (firstSeq !== this.last + 1 || this.#building !== undefined) {
      if (firstSeq > this.last + 1) this.#catchUp();
      return;
    }
    try {
      const source = this.host.sourceHash;
      const view = new DataView(bytes.buffer, bytes.byteOffset);
      let at = 0;
      while (at < bytes.length) {
        const length = view.getUint32(at + 4, true);
        this.#log.append(
          leafHashOfRecord(bytes.subarray(at, at + length), source),
        );
        at += length;
      }
      if (this.#file.full) this.#file.flush();
    } catch (error) {
      this.#fail(error);
    }
  }

  #fail(error: unknown): void {
    this.#ctx.onEvent?.({
      type: "tree_failed",
      source: this.host.key,
      message: error instanceof Error ? error.message : String(error),
    });
  }

  /** Starts the builder if the tree is behind the durable records. */
  #catchUp(): void {
    if (this.#building !== undefined || this.#stopped) return;
    if (this.last >= this.host.durableSeq()) return;
    this.#failed = undefined;
    this.#building = this.#build()
      .catch((error) => {
        this.#failed = error instanceof Error ? error : new Error(`${error}`);
        this.#fail(error);
      })
      .finally(() => {
        this.#building = undefined;
        if (this.#announce && this.#failed === undefined && !this.#stopped) {
          this.#announce = false;
          this.#ctx.onEvent?.({
            type: "tree_built",
            source: this.host.key,
            size: this.size,
            first: this.#first,
          });
        }
      });
  }

  /** Reads durable records after the tree's last leaf into it. */
  async #build(): Promise<void> {
    const source = this.host.sourceHash;
    while (!this.#stopped) {
      const target = this.host.durableSeq();
      const next = this.last + 1;
      if (next > target) return;
      const segments = this.host.segments();
      let i = segments.length - 1;
      while (i > 0 && segments[i]!.firstSeq > next) i--;
      const start = segments[i];
      if (start === undefined || start.firstSeq > next) {
        throw new MoatError(
          "ERR_CORRUPT",
          `Cannot build the Merkle tree of "${
            sourceLabel(this.host.key)
          }": record ${next} is no longer held`,
        );
      }
      outer: for (; i < segments.length; i++) {
        const segment = segments[i]!;
        const batches = readSegment(segment.path, {
          magic: VAULT_MAGIC,
          kind: VAULT_KIND,
          firstSeq: segment.firstSeq,
          last: i === segments.length - 1,
        });
        for await (const batch of batches) {
          if (this.#stopped) return;
          for (const record of batch) {
            if (record.seq > target) break outer;
            this.#locator.note(segment.firstSeq, record.seq, record.offset);
            const due = this.last + 1;
            if (record.seq < due) continue;
            if (record.seq > due) {
              throw new MoatError(
                "ERR_CORRUPT",
                `Cannot build the Merkle tree of "${
                  sourceLabel(this.host.key)
                }": record ${record.seq} follows ${due - 1}`,
              );
            }
            this.#log.append(leafHashOfRecord(record.bytes, source));
          }
          if (this.#file.full) this.#file.flush();
        }
      }
    }
  }

  /**
   * Resolves once the tree holds every record durable now (or fails).
   *
   * @returns When caught up.
   * @throws {Error} Why it cannot catch up.
   */
  async caughtUp(): Promise<void> {
    if (this.#stopped) return;
    this.#catchUp();
    while (this.#building !== undefined) {
      await this.#building;
      if (this.#failed) throw this.#failed;
      this.#catchUp();
    }
    if (this.#failed) throw this.#failed;
  }

  /**
   * The latest checkpoint, signed anew if the tree grew since the last
   * one. Waits for a tree still catching up with the durable records, so
   * that it never signs less than a checkpoint it gave out before.
   *
   * @returns The signed checkpoint.
   */
  async checkpoint(): Promise<SignedCheckpoint> {
    await this.caughtUp();
    const size = this.#log.size;
    if (this.#signed?.size === size) return this.#signed;
    const root = this.#log.root();
    const note = signCheckpoint(
      {
        origin: this.origin,
        size,
        root,
        extensions: checkpointExtensions(this.#first),
      },
      this.#ctx.signer,
    );
    this.#signed = { note, size, root };
    return this.#signed;
  }

  /**
   * Logs the latest checkpoint if the tree grew since the last logged one:
   * writes and fsyncs the tree file, then appends the note to the
   * checkpoint log and fsyncs it.
   *
   * @returns The checkpoint logged, or undefined if nothing grew.
   */
  logCheckpoint(): Promise<SignedCheckpoint | undefined> {
    const run = this.#writes.then(async () => {
      const cp = await this.checkpoint();
      if (cp.size <= this.#logged) return undefined;
      await this.#file.sync();
      if (!this.#metaSaved) {
        await writeTreeMeta(this.host.dir, this.#first);
        this.#metaSaved = true;
      }
      await appendCheckpointLog(this.host.dir, cp.note, this.#ctx.now());
      this.#logged = cp.size;
      return cp;
    });
    this.#writes = run.catch(() => {});
    return run;
  }

  /**
   * Keeps a cosigned checkpoint: checks that it is this source's, signed by
   * the vault's key, and agrees with the tree, then appends it to the log.
   *
   * @param note The note with its cosignatures.
   * @returns When durable.
   * @throws {MoatError} `ERR_CHECKPOINT` if it is not this tree's.
   */
  storeCosigned(note: string): Promise<void> {
    let cp;
    try {
      cp = openCheckpoint(note, this.#ctx.verifier);
      if (cp.origin !== this.origin) {
        throw new MoatError(
          "ERR_CHECKPOINT",
          `checkpoint of ${cp.origin} given for ${this.origin}`,
        );
      }
      if (firstSeqOf(cp.extensions) !== this.#first) {
        throw new MoatError(
          "ERR_CHECKPOINT",
          "checkpoint names another first record",
        );
      }
      if (
        cp.size > this.#log.size ||
        !_equal(this.#file.reading(() => this.#log.root(cp!.size)), cp.root)
      ) {
        throw new MoatError(
          "ERR_CHECKPOINT",
          `checkpoint of size ${cp.size} does not match the tree of ${this.#log.size}`,
        );
      }
    } catch (error) {
      return Promise.reject(error);
    }
    const run = this.#writes.then(async () => {
      await this.#file.sync();
      await appendCheckpointLog(this.host.dir, note, this.#ctx.now());
      this.#logged = Math.max(this.#logged, cp.size);
    });
    this.#writes = run.catch(() => {});
    return run;
  }

  #checkSize(size: number): void {
    if (!Number.isSafeInteger(size) || size < 0 || size > this.#log.size) {
      throw new RangeError(
        `Tree size ${size} is beyond the ${this.#log.size} records the tree of "${
          sourceLabel(this.host.key)
        }" holds`,
      );
    }
  }

  /**
   * The consistency proof from size `from` to size `to`.
   *
   * @param from The older size.
   * @param to The newer size, at most the tree's.
   * @returns The proof.
   * @throws {RangeError} For sizes out of range.
   */
  consistencyProof(from: number, to: number): Uint8Array[] {
    this.#checkSize(to);
    if (!Number.isSafeInteger(from) || from < 0 || from > to) {
      throw new RangeError(`Tree size ${from} is not within 0 to ${to}`);
    }
    return this.#file.reading(() => this.#log.consistencyProof(from, to));
  }

  /**
   * The inclusion proof of record `seq` in the tree of `size` leaves, with
   * the record's leaf read from its segment.
   *
   * @param seq The record's sequence number.
   * @param size The tree size, at most the tree's.
   * @returns The leaf bytes, its index and the audit path.
   * @throws {RangeError} For a record not in the tree of that size, or
   * pruned.
   * @throws {MoatError} `ERR_CORRUPT` if the record on disk does not match
   * the tree.
   */
  inclusionProof(
    seq: number,
    size: number,
  ): { leaf: Uint8Array; index: number; path: Uint8Array[] } {
    this.#checkSize(size);
    const label = sourceLabel(this.host.key);
    if (!Number.isSafeInteger(seq) || seq < 1) {
      throw new RangeError(`Invalid sequence number ${seq}`);
    }
    const index = seq - this.#first;
    if (index < 0) {
      throw new RangeError(
        `Record ${seq} of "${label}" is before its tree, which starts at record ${this.#first}`,
      );
    }
    if (index >= size) {
      throw new RangeError(
        `Record ${seq} of "${label}" is not in the tree of ${size} records (records ${this.#first} to ${
          this.#first + size - 1
        })`,
      );
    }
    const held = this.host.firstSeq();
    if (seq < held) {
      throw new RangeError(
        `Record ${seq} of "${label}" was pruned (the oldest held is ${held})`,
      );
    }
    const record = this.#locator.read(seq, this.host.segments());
    if (record === undefined) {
      throw new RangeError(`Record ${seq} of "${label}" is not held`);
    }
    const leaf = leafOfRecord(record, this.host.sourceHash);
    return this.#file.reading(() => {
      if (!_equal(leafHash(leaf), this.#file.get(0, index))) {
        throw new MoatError(
          "ERR_CORRUPT",
          `Record ${seq} of "${label}" does not match its leaf in the Merkle tree`,
        );
      }
      return { leaf, index, path: this.#log.inclusionProof(index, size) };
    });
  }

  /**
   * The root at an earlier size.
   *
   * @param size A size up to the tree's.
   * @returns The root.
   */
  root(size: number): Uint8Array {
    this.#checkSize(size);
    return this.#file.reading(() => this.#log.root(size));
  }

  /**
   * Stops the builder (the vault is closing): the tree keeps what it has,
   * and checkpoints are signed at that size.
   *
   * @returns When the builder has stopped.
   */
  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#building;
  }

  /**
   * Stops the builder, waits for log writes and writes buffered nodes.
   *
   * @returns When closed.
   */
  async close(): Promise<void> {
    this.#closed = true;
    await this.stop();
    await this.#writes;
    try {
      this.#file.flush();
    } catch {
      // Derived data: rebuilt at the next open.
    }
  }
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
