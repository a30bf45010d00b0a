/**
 * Merkle tree hashing and proofs exactly as RFC 9162 §2.1 defines them (the
 * hashing of RFC 6962, Certificate Transparency): leaf hash =
 * SHA-256(0x00 ‖ leaf), interior = SHA-256(0x01 ‖ left ‖ right), and a tree of
 * n leaves splits at the largest power of two below n. Anyone with the RFC can
 * recompute every root and proof this module produces.
 *
 * {@link MerkleLog} appends leaves and answers roots and proofs for any earlier
 * size from the hashes of complete subtrees kept in a {@link NodeStore}, so
 * proofs cost O(log² n) node reads and hashes whatever the size. The verify
 * functions need nothing but the proof.
 *
 * Sizes and indexes are numbers below 2^53; the arithmetic avoids 32-bit
 * bit operators for that reason.
 *
 * @module
 */

import { timingSafeEqual } from "node:crypto";
import { nativeSha256Batch, sha256Parts } from "./sha256.ts";

/** Bytes of every hash in a tree. */
export const HASH_BYTES = 32;

/**
 * SHA-256 of the parts, copied together and hashed in one call by the
 * faster implementation for the size on this runtime (`sha256.ts`).
 */
function sha256(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(HASH_BYTES);
  if (parts.length <= 2) {
    const a = parts[0] ?? EMPTY;
    const b = parts[1] ?? EMPTY;
    sha256Parts(a, 0, a.length, b, 0, b.length, out, 0);
    return out;
  }
  let total = 0;
  for (const p of parts) total += p.length;
  const joined = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    joined.set(p, at);
    at += p.length;
  }
  sha256Parts(joined, 0, total, EMPTY, 0, 0, out, 0);
  return out;
}

const EMPTY = new Uint8Array(0);
const LEAF_PREFIX = new Uint8Array([0]);
const NODE_PREFIX = new Uint8Array([1]);

/**
 * The hash of an empty tree: SHA-256 of nothing.
 *
 * @example
 * ```ts
 * import { emptyRoot } from "./merkle.ts";
 * if (Buffer.from(emptyRoot()).toString("hex").slice(0, 8) !== "e3b0c442") {
 *   throw new Error("not SHA-256 of nothing");
 * }
 * ```
 */
export function emptyRoot(): Uint8Array {
  return sha256(new Uint8Array(0));
}

/**
 * RFC 9162 leaf hash: SHA-256(0x00 ‖ leaf).
 *
 * @param leaf The leaf's bytes.
 * @returns Its 32-byte hash.
 */
export function leafHash(leaf: Uint8Array): Uint8Array {
  return sha256(LEAF_PREFIX, leaf);
}

/**
 * RFC 9162 interior node hash: SHA-256(0x01 ‖ left ‖ right).
 *
 * @param left The left child's hash.
 * @param right The right child's hash.
 * @returns The node's hash.
 */
export function nodeHash(left: Uint8Array, right: Uint8Array): Uint8Array {
  if (left.length !== HASH_BYTES || right.length !== HASH_BYTES) {
    return sha256(NODE_PREFIX, left, right);
  }
  const input = nodeInput;
  input.set(left, 1);
  input.set(right, 1 + HASH_BYTES);
  const out = new Uint8Array(HASH_BYTES);
  sha256Parts(input, 0, input.length, EMPTY, 0, 0, out, 0);
  return out;
}

/** 0x01 ‖ left ‖ right, filled by {@linkcode nodeHash}. */
const nodeInput = new Uint8Array(1 + 2 * HASH_BYTES);
nodeInput[0] = 1;

/**
 * Set bits of a non-negative integer below 2^53: the complete subtrees in
 * the frontier of a tree of that size.
 *
 * @param n The integer.
 * @returns How many bits are set.
 */
export function popcount(n: number): number {
  let count = 0;
  let lo = n % 0x100000000;
  let hi = Math.floor(n / 0x100000000);
  while (lo) {
    lo &= lo - 1;
    count++;
  }
  while (hi) {
    hi &= hi - 1;
    count++;
  }
  return count;
}

/** The largest power of two strictly below `n` (n ≥ 2). */
function splitPoint(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

function isPowerOfTwo(n: number): boolean {
  return n >= 1 && 2 ** Math.round(Math.log2(n)) === n;
}

function odd(n: number): boolean {
  return n % 2 === 1;
}

function half(n: number): number {
  return Math.floor(n / 2);
}

/**
 * The RFC 9162 root of a list of leaf hashes, computed from the definition.
 * O(n); for tests and small trees. {@link MerkleLog} is the incremental one.
 *
 * @example
 * ```ts
 * import { leafHash, nodeHash, rootOf } from "./merkle.ts";
 * const a = leafHash(new Uint8Array([1]));
 * const b = leafHash(new Uint8Array([2]));
 * const root = rootOf([a, b]);
 * if (Buffer.compare(root, nodeHash(a, b)) !== 0) throw new Error("shape");
 * ```
 *
 * @param leaves The leaf hashes, in order.
 * @returns The root hash.
 */
export function rootOf(leaves: readonly Uint8Array[]): Uint8Array {
  if (leaves.length === 0) return emptyRoot();
  if (leaves.length === 1) return leaves[0]!;
  const k = splitPoint(leaves.length);
  return nodeHash(rootOf(leaves.slice(0, k)), rootOf(leaves.slice(k)));
}

/**
 * Where a log keeps the hashes of its complete subtrees: the node at `level`
 * L and `index` i is the root of leaves [i·2^L, (i+1)·2^L). Level 0 holds the
 * leaf hashes.
 */
export interface NodeStore {
  /** Reads a node that {@link NodeStore.put} stored before. */
  get(level: number, index: number): Uint8Array;
  /** Stores a node; nodes of one level arrive in index order. */
  put(level: number, index: number, hash: Uint8Array): void;
  /**
   * Stores the node held at `buf[at, at + 32)`, copying it (the bytes are
   * reused after the call); optional, {@link NodeStore.put} of a copy if
   * absent.
   */
  putFrom?(level: number, index: number, buf: Uint8Array, at: number): void;
  /**
   * Stores `count` hashes held at `buf[at, at + 32·count)` (copied), in
   * the order {@link MerkleLog} stores them: each leaf, then every subtree
   * it completes. Optional; where absent, {@link MerkleLog.appendLeaves}
   * stores them one by one.
   */
  putRun?(buf: Uint8Array, at: number, count: number): void;
}

/** A {@link NodeStore} in memory, for tests and small trees. */
export class MemoryNodeStore implements NodeStore {
  readonly #levels: Uint8Array[][] = [];

  /** @inheritdoc */
  get(level: number, index: number): Uint8Array {
    const node = this.#levels[level]?.[index];
    if (node === undefined) {
      throw new RangeError(`no Merkle node at level ${level} index ${index}`);
    }
    return node;
  }

  /** @inheritdoc */
  put(level: number, index: number, hash: Uint8Array): void {
    (this.#levels[level] ??= [])[index] = hash;
  }

  /** How many nodes each level holds (for tests). */
  get counts(): number[] {
    return this.#levels.map((l) => l.length);
  }
}

/**
 * An append-only RFC 9162 tree over a {@link NodeStore}. Every append stores
 * the leaf hash and each subtree it completes, so any root or proof for a size
 * up to {@link MerkleLog.size} is built from O(log n) stored subtrees.
 *
 * @example
 * ```ts
 * import { leafHash, MemoryNodeStore, MerkleLog, verifyConsistency, verifyInclusion } from "./merkle.ts";
 * const log = new MerkleLog(new MemoryNodeStore());
 * for (let i = 0; i < 10; i++) log.append(leafHash(new Uint8Array([i])));
 * const root = log.root();
 * const path = log.inclusionProof(3, 10);
 * if (!verifyInclusion(leafHash(new Uint8Array([3])), 3, 10, path, root)) {
 *   throw new Error("inclusion");
 * }
 * const proof = log.consistencyProof(6, 10);
 * if (!verifyConsistency(6, 10, log.root(6), root, proof)) {
 *   throw new Error("consistency");
 * }
 * ```
 */
export class MerkleLog {
  readonly #store: NodeStore;
  #size: number;
  /**
   * The roots of the complete subtrees that make up the tree now, largest
   * (leftmost) first: one per set bit of the size, 32 bytes each, then
   * room for the leaf being appended. Two neighbours are the left and
   * right halves of the node they merge into, so a merge hashes them in
   * place.
   */
  #front = new Uint8Array(HASH_BYTES * 56);
  /** Subtrees in {@link MerkleLog.#front}. */
  #depth = 0;
  /** Where {@link MerkleLog.appendLeaves} collects the hashes it stores. */
  #stored = new Uint8Array(0);

  /**
   * @param store Where the nodes live.
   * @param size How many leaves the store already holds (its nodes must be
   *   complete for that size).
   */
  constructor(store: NodeStore, size = 0) {
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new RangeError(`bad Merkle tree size ${size}`);
    }
    this.#store = store;
    this.#size = size;
    let start = 0;
    for (let level = 52; level >= 0; level--) {
      const span = 2 ** level;
      if (start + span <= size) {
        this.#front.set(
          store.get(level, start / span),
          this.#depth++ * HASH_BYTES,
        );
        start += span;
      }
    }
  }

  /** How many leaves the tree holds. */
  get size(): number {
    return this.#size;
  }

  /**
   * Appends one leaf hash, storing it and every subtree it completes.
   *
   * @param hash The leaf's hash ({@link leafHash} of its bytes).
   */
  append(hash: Uint8Array): void {
    if (hash.length !== HASH_BYTES) {
      throw new RangeError(`a leaf hash is ${HASH_BYTES} bytes`);
    }
    this.#front.set(hash, this.#depth * HASH_BYTES);
    this.#settle();
  }

  /**
   * Appends the leaf hash held at `buf[at, at + 32)` (copied).
   *
   * @param buf Holds the leaf's hash.
   * @param at Where.
   */
  appendFrom(buf: Uint8Array, at: number): void {
    if (!(at >= 0 && at + HASH_BYTES <= buf.length)) {
      throw new RangeError(`no leaf hash at ${at} of ${buf.length} bytes`);
    }
    const front = this.#front;
    const to = this.#depth * HASH_BYTES;
    for (let i = 0; i < HASH_BYTES; i++) front[to + i] = buf[at + i]!;
    this.#settle();
  }

  /**
   * Appends `n` leaf hashes held at `buf[at, at + 32n)`: the same as
   * {@link MerkleLog.appendFrom} for each, in one native call where a batch
   * SHA-256 is installed (`setNativeSha256Batch`) and the store takes runs.
   *
   * @param buf Holds the leaf hashes.
   * @param at Where the first starts.
   * @param n How many.
   */
  appendLeaves(buf: Uint8Array, at: number, n: number): void {
    if (
      !(Number.isInteger(n) && n >= 0 && at >= 0 &&
        at + HASH_BYTES * n <= buf.length)
    ) {
      throw new RangeError(
        `no ${n} leaf hashes at ${at} of ${buf.length} bytes`,
      );
    }
    const store = this.#store;
    const fast = store.putRun ? nativeSha256Batch() : undefined;
    if (fast === undefined || n === 0) {
      for (let k = 0; k < n; k++) this.appendFrom(buf, at + HASH_BYTES * k);
      return;
    }
    // n leaves and their merges: one per trailing 1 bit of each size on
    // the way, at most n + 53 in all (a tree's height is below 54).
    const most = HASH_BYTES * (2 * n + 54);
    if (this.#stored.length < most) this.#stored = new Uint8Array(most);
    const count = fast.merkleAppend(
      this.#front,
      this.#depth,
      this.#size,
      buf,
      at,
      n,
      this.#stored,
    );
    this.#size += n;
    this.#depth = popcount(this.#size);
    store.putRun!(this.#stored, 0, count);
  }

  /**
   * Appends `n` leaves whose hashing was done elsewhere (the vault's tree
   * worker): `run` holds the `count` hashes to store, in store order (each
   * leaf, then the subtrees it completes), and `front` the frontier after
   * them.
   *
   * @param run The hashes to store.
   * @param count How many.
   * @param n The leaves among them.
   * @param front The frontier at the new size, largest subtree first.
   * @throws {RangeError} Where the shapes do not fit the new size, or the
   *   store takes no runs; nothing is stored then.
   */
  appendRun(
    run: Uint8Array,
    count: number,
    n: number,
    front: Uint8Array,
  ): void {
    const size = this.#size + n;
    const depth = popcount(size);
    if (
      !this.#store.putRun || !Number.isSafeInteger(size) || n < 0 ||
      count !== 2 * size - depth - (2 * this.#size - this.#depth) ||
      run.length < HASH_BYTES * count || front.length !== HASH_BYTES * depth
    ) {
      throw new RangeError(`${count} stored hashes do not fit ${n} leaves`);
    }
    this.#store.putRun(run, 0, count);
    this.#front.set(front, 0);
    this.#size = size;
    this.#depth = depth;
  }

  /** The frontier: the complete subtrees' roots, largest first, 32 bytes each. */
  frontier(): Uint8Array {
    return this.#front.slice(0, this.#depth * HASH_BYTES);
  }

  /**
   * Appends the leaf whose hash is SHA-256(a[aStart, aEnd) ‖ b[bStart,
   * bEnd)): the caller's parts start with the leaf prefix 0x00. The hot
   * path of the vault's appends: the hash is written where the tree keeps
   * it, with no copy of the leaf and no allocation.
   *
   * @param a The first part's buffer (0x00, then the leaf's first bytes).
   * @param aStart Its first byte.
   * @param aEnd After its last byte.
   * @param b The second part's buffer (the rest of the leaf).
   * @param bStart Its first byte.
   * @param bEnd After its last byte.
   */
  appendHashOf(
    a: Uint8Array,
    aStart: number,
    aEnd: number,
    b: Uint8Array,
    bStart: number,
    bEnd: number,
  ): void {
    sha256Parts(
      a,
      aStart,
      aEnd,
      b,
      bStart,
      bEnd,
      this.#front,
      this.#depth * HASH_BYTES,
    );
    this.#settle();
  }

  /**
   * Stores the leaf hash just written after the frontier, and merges it
   * with each left sibling it completes (one per trailing 1 bit of the old
   * size), storing every merged node.
   */
  #settle(): void {
    const front = this.#front;
    const store = this.#store;
    const index = this.#size;
    let depth = this.#depth;
    let at = depth * HASH_BYTES;
    if (store.putFrom) store.putFrom(0, index, front, at);
    else store.put(0, index, front.slice(at, at + HASH_BYTES));
    let level = 0;
    let i = index;
    while (odd(i)) {
      // 0x01 ‖ left ‖ right, the two neighbours, into the left one's slot.
      at -= HASH_BYTES;
      sha256Parts(
        NODE_PREFIX,
        0,
        1,
        front,
        at,
        at + 2 * HASH_BYTES,
        front,
        at,
      );
      depth--;
      level++;
      i = half(i);
      if (store.putFrom) store.putFrom(level, i, front, at);
      else store.put(level, i, front.slice(at, at + HASH_BYTES));
    }
    this.#depth = depth + 1;
    this.#size = index + 1;
  }

  /** The frontier subtree at `j` (0: the largest). */
  #frontier(j: number): Uint8Array {
    return this.#front.slice(j * HASH_BYTES, (j + 1) * HASH_BYTES);
  }

  /**
   * The root of the tree as it was at `size` leaves.
   *
   * @param size A size up to {@link MerkleLog.size}; the current one if omitted.
   * @returns The root hash.
   */
  root(size = this.#size): Uint8Array {
    this.#checkSize(size);
    if (size === this.#size) {
      if (size === 0) return emptyRoot();
      let node = this.#frontier(this.#depth - 1);
      for (let j = this.#depth - 2; j >= 0; j--) {
        node = nodeHash(this.#frontier(j), node);
      }
      return node;
    }
    return size === 0 ? emptyRoot() : this.#subtree(0, size);
  }

  /**
   * The RFC 9162 inclusion proof (audit path) of leaf `index` in the tree of
   * `size` leaves, deepest sibling first.
   *
   * @param index The leaf's index (0-based), below `size`.
   * @param size The tree size the proof is for.
   * @returns The audit path.
   */
  inclusionProof(index: number, size: number = this.#size): Uint8Array[] {
    this.#checkSize(size);
    if (!Number.isSafeInteger(index) || index < 0 || index >= size) {
      throw new RangeError(`leaf ${index} is not in a tree of ${size}`);
    }
    const path: Uint8Array[] = [];
    const walk = (m: number, start: number, n: number): void => {
      if (n === 1) return;
      const k = splitPoint(n);
      if (m < k) {
        walk(m, start, k);
        path.push(this.#subtree(start + k, n - k));
      } else {
        walk(m - k, start + k, n - k);
        path.push(this.#subtree(start, k));
      }
    };
    walk(index, 0, size);
    return path;
  }

  /**
   * The RFC 9162 consistency proof that the tree of `size` leaves extends the
   * tree of `from` leaves. Empty when `from` is 0 or equals `size`.
   *
   * @param from The older size.
   * @param size The newer size, at least `from`.
   * @returns The proof.
   */
  consistencyProof(from: number, size: number = this.#size): Uint8Array[] {
    this.#checkSize(size);
    if (!Number.isSafeInteger(from) || from < 0 || from > size) {
      throw new RangeError(`size ${from} is not within a tree of ${size}`);
    }
    const proof: Uint8Array[] = [];
    if (from === 0 || from === size) return proof;
    const sub = (m: number, start: number, n: number, whole: boolean) => {
      if (m === n) {
        if (!whole) proof.push(this.#subtree(start, m));
        return;
      }
      const k = splitPoint(n);
      if (m <= k) {
        sub(m, start, k, whole);
        proof.push(this.#subtree(start + k, n - k));
      } else {
        sub(m - k, start + k, n - k, false);
        proof.push(this.#subtree(start, k));
      }
    };
    sub(from, 0, size, true);
    return proof;
  }

  /**
   * The root of leaves [start, start + n), a range the RFC recursion produces
   * (so `start` is a multiple of the power of two at or above `n`).
   */
  #subtree(start: number, n: number): Uint8Array {
    if (isPowerOfTwo(n) && start % n === 0) {
      return this.#store.get(Math.round(Math.log2(n)), start / n);
    }
    const k = splitPoint(n);
    return nodeHash(this.#subtree(start, k), this.#subtree(start + k, n - k));
  }

  #checkSize(size: number): void {
    if (!Number.isSafeInteger(size) || size < 0 || size > this.#size) {
      throw new RangeError(
        `tree size ${size} is beyond the ${this.#size} leaves held`,
      );
    }
  }
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

function wellFormed(path: readonly Uint8Array[]): boolean {
  return path.every((p) => p instanceof Uint8Array && p.length === HASH_BYTES);
}

/**
 * Checks an inclusion proof (RFC 9162 §2.1.3.2).
 *
 * @param leaf The leaf hash.
 * @param index The leaf's index.
 * @param size The tree size the proof is for.
 * @param path The audit path.
 * @param root The tree's root at `size`.
 * @returns Whether the proof shows the leaf at `index` in that tree.
 */
export function verifyInclusion(
  leaf: Uint8Array,
  index: number,
  size: number,
  path: readonly Uint8Array[],
  root: Uint8Array,
): boolean {
  if (
    !Number.isSafeInteger(index) || !Number.isSafeInteger(size) ||
    index < 0 || index >= size || !wellFormed(path)
  ) return false;
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of path) {
    if (sn === 0) return false;
    if (odd(fn) || fn === sn) {
      r = nodeHash(p, r);
      if (!odd(fn)) {
        while (!odd(fn) && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      }
    } else {
      r = nodeHash(r, p);
    }
    fn = half(fn);
    sn = half(sn);
  }
  return sn === 0 && equal(r, root);
}

/**
 * Checks a consistency proof (RFC 9162 §2.1.4.2): the tree of `size` leaves
 * with root `newRoot` extends the tree of `from` leaves with root `oldRoot`.
 * Every tree extends the empty one; equal sizes need equal roots and an empty
 * proof.
 *
 * @param from The older size.
 * @param size The newer size.
 * @param oldRoot The older root.
 * @param newRoot The newer root.
 * @param proof The consistency proof.
 * @returns Whether the proof holds.
 */
export function verifyConsistency(
  from: number,
  size: number,
  oldRoot: Uint8Array,
  newRoot: Uint8Array,
  proof: readonly Uint8Array[],
): boolean {
  if (
    !Number.isSafeInteger(from) || !Number.isSafeInteger(size) ||
    from < 0 || from > size || !wellFormed(proof)
  ) return false;
  if (from === 0) return proof.length === 0;
  if (from === size) return proof.length === 0 && equal(oldRoot, newRoot);
  const path = isPowerOfTwo(from) ? [oldRoot, ...proof] : [...proof];
  if (path.length === 0) return false;
  let fn = from - 1;
  let sn = size - 1;
  while (odd(fn)) {
    fn = half(fn);
    sn = half(sn);
  }
  let fr = path[0]!;
  let sr = path[0]!;
  for (const c of path.slice(1)) {
    if (sn === 0) return false;
    if (odd(fn) || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      if (!odd(fn)) {
        while (!odd(fn) && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn = half(fn);
    sn = half(sn);
  }
  return sn === 0 && equal(fr, oldRoot) && equal(sr, newRoot);
}
