/**
 * `vault verify`'s check of a source's Merkle tree: the tree recomputed
 * from the records must equal the stored nodes (as far as a logged
 * checkpoint vouches for them: nodes after the last one were never
 * fsync'd), the vault's own logged checkpoints, and every checkpoint held
 * outside the vault (`--checkpoint FILE`). An outside checkpoint the vault
 * does not extend (its tree is smaller: an older copy or a cut tail; or
 * its root at that size differs: rewritten history) is a `checkpoint`
 * problem naming the file.
 *
 * @module
 */

import { closeSync, openSync, readSync } from "node:fs";
import { join } from "node:path";
import { openCheckpoint } from "../checkpoint.ts";
import type { Checkpoint, Verifier } from "../checkpoint.ts";
import { MerkleLog } from "../merkle.ts";
import type { NodeStore } from "../merkle.ts";
import { _equal } from "./_chain.ts";
import {
  firstSeqOf,
  readCheckpointLog,
  readTreeMeta,
  TREE_FILE,
} from "./_checkpoints.ts";
import {
  appendRecordLeaf,
  nodesForSize,
  sizeForNodes,
  TreeFile,
} from "./_tree_file.ts";
import type { VerifyProblem } from "./_verify_seals.ts";

/** A checkpoint held outside the vault, as `verify` was given it. */
export interface OutsideCheckpoint {
  /** Where it came from (a file name), for messages. */
  file: string;
  /** The checkpoint, its signature checked. */
  checkpoint: Checkpoint;
}

/** What the tree check of one source found. */
export interface TreeReport {
  /** Leaves recomputed from the records. */
  size: number;
  /** The first record's sequence number (leaf 0). */
  first: number;
  /** Checkpoints checked: the vault's own logged ones and outside ones. */
  checkpoints: number;
  /** Outside checkpoints this source's tree extends. */
  outside: number;
  /** Why the tree could not be recomputed, if it could not. */
  unchecked?: string;
  /** The vault stores no tree for the source yet (not damage). */
  noTree?: boolean;
}

/**
 * A `NodeStore` that compares every node the recomputed tree stores with
 * the stored one at the same place, reading the tree file in order.
 */
class CompareStore implements NodeStore {
  readonly #file: TreeFile;
  /** Stored nodes vouched for by a logged checkpoint (compared). */
  readonly #trusted: number;
  #next: number;
  #buf = new Uint8Array(64 * 1024);
  #bufFirst = 0;
  #bufNodes = 0;
  /** Position of the first stored node that differs. */
  mismatch: number | undefined;

  constructor(file: TreeFile, trusted: number, start: number) {
    this.#file = file;
    this.#trusted = trusted;
    this.#next = start;
  }

  get(level: number, index: number): Uint8Array {
    return this.#file.get(level, index);
  }

  put(_level: number, _index: number, hash: Uint8Array): void {
    const pos = this.#next++;
    if (pos >= this.#trusted || this.mismatch !== undefined) return;
    if (pos < this.#bufFirst || pos >= this.#bufFirst + this.#bufNodes) {
      const fd = openSync(this.#file.path, "r");
      try {
        const want = Math.min(this.#buf.length / 32, this.#trusted - pos);
        const n = readSync(fd, this.#buf, 0, want * 32, pos * 32);
        this.#bufFirst = pos;
        this.#bufNodes = Math.floor(n / 32);
      } finally {
        closeSync(fd);
      }
      if (this.#bufNodes === 0) {
        this.mismatch = pos;
        return;
      }
    }
    const at = (pos - this.#bufFirst) * 32;
    if (!_equal(this.#buf.subarray(at, at + 32), hash)) this.mismatch = pos;
  }
}

/** A checkpoint to compare with the recomputed tree, and where it came from. */
interface Wanted {
  size: number;
  root: Uint8Array;
  /** Outside file, or undefined for one of the vault's own. */
  file?: string;
  /** When the vault logged it. */
  time?: number;
}

/** The tree check of one source; fed each verified record in order. */
export class TreeCheck {
  readonly #label: string;
  readonly #sourceHash: Uint8Array;
  readonly #path: string;
  readonly #first: number;
  readonly #stored: number;
  /** Leaves the last logged checkpoint vouches for (their nodes were fsync'd). */
  readonly #trustedSize: number;
  readonly #wanted: Wanted[];
  /** The sizes of `#wanted`, whose roots the recomputation keeps. */
  readonly #sizes: Set<number>;
  readonly #problems: VerifyProblem[];
  #store: CompareStore | undefined;
  #log: MerkleLog | undefined;
  /** Leaves before the first record fed (pruned), read from stored nodes. */
  #base = 0;
  #roots = new Map<number, Uint8Array>();
  #unchecked: string | undefined;
  #stopped = false;

  private constructor(
    label: string,
    sourceHash: Uint8Array,
    state: {
      path: string;
      first: number;
      stored: number;
      trustedSize: number;
      wanted: Wanted[];
      problems: VerifyProblem[];
    },
  ) {
    this.#label = label;
    this.#sourceHash = sourceHash;
    this.#path = state.path;
    this.#first = state.first;
    this.#stored = state.stored;
    this.#trustedSize = state.trustedSize;
    this.#wanted = state.wanted;
    this.#sizes = new Set(state.wanted.map((w) => w.size));
    this.#problems = state.problems;
  }

  /**
   * Reads what the source's tree has on disk: its first record, its logged
   * checkpoints (signed by the vault's key), its stored nodes.
   *
   * @param dir The source directory.
   * @param options The source's label, hash and origin, the vault's
   * checkpoint verifier (undefined: the vault has no key yet), and the
   * outside checkpoints of this source.
   * @returns The check, ready for records.
   */
  static async open(
    dir: string,
    options: {
      label: string;
      sourceHash: Uint8Array;
      origin: string;
      verifier: Verifier | undefined;
      outside: readonly OutsideCheckpoint[];
    },
  ): Promise<TreeCheck> {
    const problems: VerifyProblem[] = [];
    const problem = (message: string, file = dir) =>
      problems.push({
        kind: "tree",
        message: `${options.label}: ${message}`,
        source: options.label,
        file,
      });
    const path = join(dir, TREE_FILE);
    const meta = await readTreeMeta(dir).catch((error) => {
      problem((error as Error).message);
      return undefined;
    });
    const logged = await readCheckpointLog(dir).catch((error) => {
      problem((error as Error).message);
      return [];
    });
    const wanted: Wanted[] = [];
    let first = meta?.first ?? 1;
    let trustedSize = 0;
    if (options.verifier !== undefined) {
      for (const entry of logged) {
        let cp;
        try {
          cp = openCheckpoint(entry.note, options.verifier);
        } catch (error) {
          problem(
            `a checkpoint in its log (logged at ${
              new Date(entry.time).toISOString()
            }) does not verify: ${(error as Error).message}`,
          );
          continue;
        }
        if (cp.origin !== options.origin) {
          problem(`its checkpoint log holds a checkpoint of ${cp.origin}`);
          continue;
        }
        const f = firstSeqOf(cp.extensions);
        if (f !== first) {
          problem(
            `a logged checkpoint names record ${f} as its first leaf, its tree ${first}`,
          );
          first = f;
        }
        wanted.push({ size: cp.size, root: cp.root, time: entry.time });
        trustedSize = Math.max(trustedSize, cp.size);
      }
    }
    for (const { file, checkpoint } of options.outside) {
      const f = firstSeqOf(checkpoint.extensions);
      if (f !== first) {
        problems.push({
          kind: "checkpoint",
          message:
            `${options.label}: checkpoint "${file}" names record ${f} as the first leaf, the vault's tree ${first}: the tree was rebuilt after records were lost`,
          source: options.label,
          file,
        });
        continue;
      }
      wanted.push({ size: checkpoint.size, root: checkpoint.root, file });
    }
    const stored = TreeFile.nodesOnDisk(path);
    return new TreeCheck(options.label, options.sourceHash, {
      path,
      first,
      stored,
      trustedSize: Math.min(trustedSize, sizeForNodes(stored)),
      wanted,
      problems,
    });
  }

  /**
   * Adds a verified record.
   *
   * @param seq Its sequence number.
   * @param record The whole record.
   */
  add(seq: number, record: Uint8Array): void {
    if (this.#stopped || seq < this.#first) return;
    let log = this.#log;
    if (log === undefined) {
      const before = seq - this.#first;
      if (before > 0 && nodesForSize(before) > this.#stored) {
        // Records before this one were pruned, and the nodes over them
        // are not stored: the tree cannot be recomputed.
        this.#unchecked = `records ${this.#first} to ${
          seq - 1
        } were pruned and the Merkle tree over them is not stored`;
        this.#stopped = true;
        return;
      }
      const file = new TreeFile(this.#path, this.#stored);
      this.#store = new CompareStore(
        file,
        nodesForSize(this.#trustedSize),
        nodesForSize(before),
      );
      this.#base = before;
      log = this.#log = new MerkleLog(this.#store, before);
      this.#roots.set(before, log.root());
    }
    if (seq !== this.#first + log.size) {
      this.#stopped = true;
      return;
    }
    appendRecordLeaf(log, record, 0, record.length, this.#sourceHash);
    if (this.#sizes.has(log.size)) {
      this.#roots.set(log.size, log.root());
    }
  }

  /**
   * Compares the recomputed tree with the stored nodes and every
   * checkpoint.
   *
   * @returns The problems (tree damage first, then one per checkpoint the
   * vault does not extend) and the report.
   */
  finish(): { problems: VerifyProblem[]; report: TreeReport } {
    const problems = this.#problems;
    const log = this.#log;
    const size = log?.size ?? 0;
    const mismatch = this.#store?.mismatch;
    if (mismatch !== undefined) {
      const leaf = sizeForNodes(mismatch);
      problems.unshift({
        kind: "tree",
        message:
          `${this.#label}: the stored Merkle tree differs from the records at record ${
            this.#first + leaf
          } ("${this.#path}" at byte ${mismatch * 32})`,
        source: this.#label,
        file: this.#path,
        offset: mismatch * 32,
      });
    }
    let checked = 0;
    let outside = 0;
    for (const want of this.#wanted) {
      const name = want.file === undefined
        ? `its own checkpoint of ${want.size} records (logged at ${
          new Date(want.time!).toISOString()
        })`
        : `checkpoint "${want.file}" (${want.size} records)`;
      const push = (message: string) =>
        problems.push({
          kind: want.file === undefined ? "tree" : "checkpoint",
          message: `${this.#label}: ${message}`,
          source: this.#label,
          ...(want.file !== undefined && { file: want.file }),
        });
      if (this.#unchecked !== undefined) {
        if (want.file !== undefined) {
          push(`${name} cannot be checked: ${this.#unchecked}`);
        }
        continue;
      }
      if (want.size > size) {
        push(
          `the vault holds ${size} records of its tree, fewer than ${name}: the vault was rolled back, or its newest records were cut`,
        );
        continue;
      }
      let root = this.#roots.get(want.size);
      if (root === undefined && log !== undefined && want.size <= this.#base) {
        // Within pruned records: only the stored nodes are left.
        try {
          root = new MerkleLog(
            new TreeFile(this.#path, nodesForSize(this.#base)),
            this.#base,
          ).root(want.size);
        } catch {
          root = undefined;
        }
      }
      if (root === undefined) {
        if (want.file !== undefined) {
          push(`${name} cannot be checked: the records it covers are gone`);
        }
        continue;
      }
      checked++;
      if (!_equal(root, want.root)) {
        push(
          `the vault's tree of ${want.size} records does not have the root of ${name}: its history was rewritten`,
        );
        continue;
      }
      if (want.file !== undefined) outside++;
    }
    return {
      problems,
      report: {
        size,
        first: this.#first,
        checkpoints: checked,
        outside,
        ...(this.#unchecked !== undefined && { unchecked: this.#unchecked }),
        ...(this.#stored === 0 && { noTree: true }),
      },
    };
  }
}
