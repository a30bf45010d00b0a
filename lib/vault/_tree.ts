/**
 * Each source's Merkle tree inside an open vault: its live appends, the
 * builder that catches it up with the records, its signed checkpoints and
 * its proofs (the files beside it: `_checkpoints.ts`, `_tree_file.ts`).
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

import { join } from "node:path";
import { openCheckpoint, signCheckpoint } from "../checkpoint.ts";
import type { Signer, Verifier } from "../checkpoint.ts";
import { MoatError } from "../errors.ts";
import {
  leafHash,
  MerkleLog,
  verifyConsistency,
  verifyInclusion,
} from "../merkle.ts";
import { readSegment } from "../segment/scanner.ts";
import { _equal } from "./_chain.ts";
import {
  appendCheckpointLog,
  checkpointExtensions,
  checkpointOrigin,
  firstSeqOf,
  readCheckpointLog,
  readTreeMeta,
  TREE_FILE,
  TREE_META_FILE,
  writeTreeMeta,
} from "./_checkpoints.ts";
import type { SignedCheckpoint, TreeEvent } from "./_checkpoints.ts";
import { VAULT_KIND, VAULT_MAGIC } from "./_format.ts";
import { sourceLabel } from "./_key.ts";
import type { SourceKey } from "./_key.ts";
import {
  appendRecordLeaf,
  leafOfRecord,
  nodesForSize,
  RecordLocator,
  TreeFile,
} from "./_tree_file.ts";
import type { LocatorSegment } from "./_tree_file.ts";
import type { ChunkHashes, TreeHasher } from "./_tree_chunk.ts";

export type { SignedCheckpoint, TreeEvent } from "./_checkpoints.ts";

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

/** A chunk queued for commit whose leaves the tree has not taken yet. */
interface PendingChunk {
  firstSeq: number;
  lastSeq: number;
  bytes: Uint8Array;
  /** Its leaf hashes, where they were hashed as it was encoded. */
  leaves?: Uint8Array | undefined;
  /**
   * Sent to the hasher: "waiting" until it answers, then its hashes
   * (undefined again if it failed, or once they are taken).
   */
  answer?: "waiting" | ChunkHashes | undefined;
  /** Settles at the answer. */
  sent?: Promise<void> | undefined;
  /** Where each record starts in `bytes`, if the worker said. */
  starts?: Int32Array | undefined;
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
  /**
   * Hashes chunks on a second thread where given (`_tree_chunk.ts`); else
   * the trees hash on the vault's thread.
   */
  hasher?: TreeHasher | undefined;
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
  /**
   * Chunks whose place in their segment is not known yet: a chunk's end is
   * the segment's durable size only while it is the last durable record.
   */
  #unplaced: {
    firstSeq: number;
    bytes: Uint8Array;
    starts: Int32Array | undefined;
  }[] = [];
  /**
   * Chunks queued for commit whose leaves the tree has not taken yet,
   * oldest first (see `expect`).
   */
  #pending: PendingChunk[] = [];
  /** This tree's stream in the hasher, once it sent one. */
  #stream: number | undefined;
  /**
   * The size the hasher's copy of this tree reaches once it has every
   * chunk sent; -1 when it holds none or is out of step.
   */
  #hasherSize = -1;
  /** Chunks at the hasher, not answered yet. */
  #inFlight = 0;
  /** Builder runs started (for tests). */
  #builds = 0;
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
    this.#hasherSize = -1;
    this.#file.truncate(nodesForSize(size));
    this.#log = new MerkleLog(this.#file, size);
    if (this.#signed && this.#signed.size > size) this.#signed = undefined;
    this.#logged = Math.min(this.#logged, size);
  }

  /**
   * Whether the chunk starting at `firstSeq` is hashed by the worker
   * (asked before it is encoded, so that its leaves are not hashed here
   * too): where there is one, this tree's copy there is in step, or can be
   * set anew now (nothing out, every earlier chunk in the tree).
   *
   * @param firstSeq The chunk's first sequence number.
   * @returns True if {@linkcode SourceTree.expect} is to send it.
   */
  hashesElsewhere(firstSeq: number): boolean {
    const hasher = this.#ctx.hasher;
    if (hasher === undefined || hasher.broken !== undefined) return false;
    if (!this.takesLeaves) return false;
    const size = firstSeq - this.#first;
    return size === this.#hasherSize ||
      (this.#inFlight === 0 && size === this.#log.size);
  }

  /** Sends a chunk to the hasher; settles (never rejects) with its answer. */
  #send(chunk: PendingChunk): Promise<void> {
    const hasher = this.#ctx.hasher!;
    const size = chunk.firstSeq - this.#first;
    this.#stream ??= hasher.newStream();
    const reset = size === this.#hasherSize ? undefined : {
      source: this.host.sourceHash,
      front: this.#log.frontier(),
    };
    this.#hasherSize = size + chunk.lastSeq - chunk.firstSeq + 1;
    this.#inFlight++;
    return hasher.hash({
      stream: this.#stream,
      size,
      bytes: chunk.bytes,
      ...(reset && { reset }),
    }).then((done) => {
      this.#inFlight--;
      if ("error" in done) {
        this.#hasherSize = -1;
        chunk.answer = undefined;
      } else chunk.answer = done;
      if (this.#closed) return;
      this.#drain();
      if (this.#building === undefined && this.last < this.host.durableSeq()) {
        this.#catchUp();
      }
    });
  }

  /**
   * Notes a chunk of records being committed (called when it is queued,
   * before it is durable): once it is, the tree takes its leaves from
   * these bytes, whoever asks first — {@linkcode SourceTree.appendDurable}
   * after the commit, or a checkpoint asked for between the commit and
   * that call (which would otherwise find the tree behind the durable
   * records and read them back from disk).
   *
   * @param firstSeq The first record's sequence number.
   * @param lastSeq The last record's.
   * @param bytes The records, encoded back to back.
   * @param leaves Their leaf hashes, 32 bytes each, if hashed already
   * (see {@linkcode SourceTree.takesLeaves}).
   * @param elsewhere True to send the chunk to the hasher (where
   *   {@linkcode SourceTree.hashesElsewhere} said so).
   * @returns When the hasher answered, if it was sent (never rejects).
   */
  expect(
    firstSeq: number,
    lastSeq: number,
    bytes: Uint8Array,
    leaves?: Uint8Array,
    elsewhere = false,
  ): Promise<void> | undefined {
    if (this.#closed) return undefined;
    const pending = this.#pending;
    if (this.#building !== undefined) {
      // The builder reads what it needs from disk: hold no bytes for it.
      pending.length = 0;
      this.#hasherSize = -1;
      return undefined;
    }
    // A chunk queued again from the same sequence number replaces what
    // was queued from there before (whose commit failed).
    while (
      pending.length > 0 && pending[pending.length - 1]!.firstSeq >= firstSeq
    ) {
      // The hasher's copy took a chunk that the tree never will.
      if (pending.pop()!.answer !== undefined) this.#hasherSize = -1;
    }
    const chunk: PendingChunk = { firstSeq, lastSeq, bytes, leaves };
    pending.push(chunk);
    if (!elsewhere || !this.hashesElsewhere(firstSeq)) {
      // Hashed here: the hasher's copy lacks it from now on.
      this.#hasherSize = -1;
      return undefined;
    }
    chunk.answer = "waiting";
    return chunk.sent = this.#send(chunk);
  }

  /**
   * Whether leaf hashes given to {@linkcode SourceTree.expect} would be
   * used now (not while the builder reads the records from disk).
   */
  get takesLeaves(): boolean {
    return !this.#closed && this.#building === undefined;
  }

  /**
   * Adds the leaves of records that just became durable (called before
   * their append resolves), with those of every chunk noted by
   * {@linkcode SourceTree.expect} that is durable by now. Records the tree
   * is not ready for (it is still catching up) are left to the builder.
   * Never throws.
   *
   * @param firstSeq The first record's sequence number.
   * @param bytes The records, encoded back to back.
   */
  appendDurable(firstSeq: number, bytes: Uint8Array): void {
    if (this.#closed) return;
    if (firstSeq <= this.last) return; // taken from #pending already
    const pending = this.#pending;
    if (!pending.some((chunk) => chunk.bytes === bytes)) {
      // Not noted (queued while the builder ran): durable now, in order.
      this.#hasherSize = -1;
      let i = pending.length;
      while (i > 0 && pending[i - 1]!.firstSeq > firstSeq) i--;
      pending.splice(i, 0, { firstSeq, lastSeq: Infinity, bytes });
    }
    this.#drain();
    if (this.#building === undefined && this.last < this.host.durableSeq()) {
      this.#catchUp();
    }
  }

  /**
   * Appends the leaves of the noted chunks that are durable now and follow
   * the tree's last leaf; drops the ones it holds already. Never throws.
   */
  #drain(): void {
    const pending = this.#pending;
    if (pending.length === 0) return;
    if (this.#building !== undefined) {
      // The builder reads them from disk.
      pending.length = 0;
      return;
    }
    const durable = this.host.durableSeq();
    const source = this.host.sourceHash;
    let taken = 0;
    try {
      for (; taken < pending.length; taken++) {
        const chunk = pending[taken]!;
        if (chunk.firstSeq <= this.last) continue;
        if (chunk.firstSeq !== this.last + 1) break;
        const bytes = chunk.bytes;
        // Infinity: appendDurable's own chunk without a note, durable now.
        if (chunk.lastSeq !== Infinity && chunk.lastSeq > durable) break;
        const leaves = chunk.leaves;
        const file = this.#file;
        const answer = chunk.answer;
        // The hasher's answer comes before this chunk goes in; the next
        // drain (at the answer) takes it.
        if (answer === "waiting") break;
        if (this.#takeAnswer(chunk)) {
          if (file.full) file.flush();
        } else if (leaves !== undefined) {
          // The whole chunk's nodes in one call (a chunk is at most
          // maxRecordsPerAppend records, so the buffer's growth is bounded).
          this.#log.appendLeaves(leaves, 0, leaves.length / 32);
          if (file.full) file.flush();
        } else {
          const view = new DataView(bytes.buffer, bytes.byteOffset);
          for (let at = 0; at < bytes.length;) {
            const length = view.getUint32(at + 4, true);
            appendRecordLeaf(this.#log, bytes, at, length, source);
            at += length;
            // Written every 64 KiB: a large chunk would grow the buffer.
            if (file.full) file.flush();
          }
        }
        this.#place(chunk.firstSeq, bytes, this.last, chunk.starts);
      }
    } catch (error) {
      this.#fail(error);
    } finally {
      pending.splice(0, taken);
    }
  }

  /**
   * Puts in the hasher's hashes for a chunk, if it answered with hashes
   * that fit; false leaves the chunk to be hashed here.
   */
  #takeAnswer(chunk: PendingChunk): boolean {
    const answer = chunk.answer;
    if (answer === undefined || answer === "waiting") return false;
    chunk.answer = undefined;
    try {
      if (answer.n !== chunk.lastSeq - chunk.firstSeq + 1) {
        throw new RangeError(`${answer.n} records`);
      }
      // The hashes are stored here, not by the worker: the answer of a
      // chunk that was replaced (its commit failed) is never applied, and
      // writes nothing.
      this.#log.appendRun(answer.run, answer.count, answer.n, answer.front);
      chunk.starts = answer.starts;
      return true;
    } catch {
      // Out of step (checked before anything was stored): start its copy
      // anew at the next chunk, and hash this one here.
      this.#hasherSize = -1;
      return false;
    }
  }

  /**
   * Tells the record locator where the chunks committed since the last
   * placed one are, once one ends at the last durable record: they lie
   * back to back before the segment's durable end.
   */
  #place(
    firstSeq: number,
    bytes: Uint8Array,
    lastSeq: number,
    starts: Int32Array | undefined,
  ): void {
    const unplaced = this.#unplaced;
    unplaced.push({ firstSeq, bytes, starts });
    if (lastSeq !== this.host.durableSeq()) {
      if (unplaced.length > 16) unplaced.splice(0, unplaced.length - 16);
      return;
    }
    const segments = this.host.segments();
    const segment = segments[segments.length - 1];
    let end = segment?.size ?? 0;
    for (let i = unplaced.length - 1; i >= 0 && segment; i--) {
      const chunk = unplaced[i]!;
      if (chunk.firstSeq < segment.firstSeq) break;
      this.#locator.noteChunk(
        segment.firstSeq,
        chunk.firstSeq,
        chunk.bytes,
        end,
        chunk.starts,
      );
      end -= chunk.bytes.length;
    }
    unplaced.length = 0;
  }

  #fail(error: unknown): void {
    this.#ctx.onEvent?.({
      type: "tree_failed",
      source: this.host.key,
      message: error instanceof Error ? error.message : String(error),
    });
  }

  /** Builder runs started so far (for tests). */
  get builds(): number {
    return this.#builds;
  }

  /**
   * Starts the builder if the tree is behind the durable records that it
   * has no noted chunk for.
   */
  #catchUp(): void {
    if (this.#building !== undefined || this.#stopped) return;
    if (this.last >= this.host.durableSeq()) return;
    this.#drain();
    if (this.last >= this.host.durableSeq()) return;
    // The next chunk is at the hasher: its answer drains it.
    if (this.#awaitedAnswer() !== undefined) return;
    this.#builds++;
    this.#failed = undefined;
    this.#hasherSize = -1;
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
            const bytes = record.bytes;
            appendRecordLeaf(this.#log, bytes, 0, bytes.length, source);
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
    for (;;) {
      this.#catchUp();
      if (this.#building !== undefined) {
        await this.#building;
        if (this.#failed) throw this.#failed;
        continue;
      }
      const answer = this.#awaitedAnswer();
      if (answer === undefined) break;
      await answer;
    }
    if (this.#failed) throw this.#failed;
  }

  /**
   * The hasher's answer the tree waits for, if the next durable chunk is
   * out there.
   */
  #awaitedAnswer(): Promise<void> | undefined {
    if (this.last >= this.host.durableSeq()) return undefined;
    const next = this.#pending.find((c) => c.firstSeq === this.last + 1);
    return next?.answer === "waiting" ? next.sent : undefined;
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
      await appendCheckpointLog(this.host.dir, note, this.#ctx.now(), true);
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
    return this.#file.reading(() => {
      const proof = this.#log.consistencyProof(from, to);
      // Stored nodes are not fsync'd one by one: a proof built from a
      // damaged one must not leave the vault.
      if (
        !verifyConsistency(
          from,
          to,
          this.#log.root(from),
          this.#log.root(to),
          proof,
        )
      ) this.#damaged();
      return proof;
    });
  }

  #damaged(): never {
    throw new MoatError(
      "ERR_CORRUPT",
      `The stored Merkle tree of "${
        sourceLabel(this.host.key)
      }" is damaged (moat vault verify names where); the server rebuilds it at its next start`,
    );
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
      const path = this.#log.inclusionProof(index, size);
      if (
        !verifyInclusion(leafHash(leaf), index, size, path, this.root(size))
      ) {
        this.#damaged();
      }
      return { leaf, index, path };
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
    // Chunks at the hasher go in first: the last checkpoint covers them.
    for (const chunk of [...this.#pending]) {
      if (chunk.answer === "waiting") await chunk.sent;
    }
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
    if (this.#stream !== undefined) this.#ctx.hasher?.drop(this.#stream);
    await this.stop();
    await this.#writes;
    try {
      this.#file.flush();
    } catch {
      // Derived data: rebuilt at the next open.
    }
  }
}
