/**
 * Helpers for witness tests: a small signed Merkle log standing in for one
 * vault source (its own key, tree and checkpoints), built from
 * `lib/merkle.ts` and `lib/checkpoint.ts` only.
 *
 * @module
 */

import { generateKey, parseSigner, signCheckpoint } from "../lib/checkpoint.ts";
import { leafHash, MemoryNodeStore, MerkleLog } from "../lib/merkle.ts";
import type { WitnessAdd } from "../lib/protocol.ts";

const enc = new TextEncoder();

/** One signed log: its key, its tree, and requests for a witness. */
export class TestLog {
  readonly origin: string;
  readonly signer: string;
  readonly verifier: string;
  readonly tree = new MerkleLog(new MemoryNodeStore());

  /**
   * @param origin The checkpoint origin line.
   * @param key A key pair to share with another log (a fork); new by default.
   */
  constructor(
    origin = "moat/0123456789abcdef/source",
    key = generateKey("vault.test"),
  ) {
    this.origin = origin;
    this.signer = key.signer;
    this.verifier = key.verifier;
  }

  /** Appends `n` leaves, `tag` making them differ from another log's. */
  grow(n: number, tag = ""): this {
    for (let i = 0; i < n; i++) {
      this.tree.append(leafHash(enc.encode(`${tag}line ${this.tree.size}`)));
    }
    return this;
  }

  /** The signed checkpoint at `size` (default: the whole tree). */
  note(size = this.tree.size): string {
    return signCheckpoint(
      { origin: this.origin, size, root: this.tree.root(size) },
      parseSigner(this.signer),
    );
  }

  /** A witness request for the tree at `size`, proved from `old`. */
  add(old: number, size = this.tree.size): WitnessAdd {
    return {
      key: this.verifier,
      old,
      proof: old > 0 && old < size ? this.tree.consistencyProof(old, size) : [],
      checkpoint: this.note(size),
    };
  }
}
