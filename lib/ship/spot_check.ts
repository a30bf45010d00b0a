/**
 * `moat ship --audit-every N`: the shipper remembers a random sample of the
 * records it sent in the last hour (a bounded reservoir of sequence number,
 * time, flags and the SHA-256 of the line, since acknowledged records leave
 * the spool), and asks the vault, N times a minute, to prove one of them in
 * the tree of the checkpoint it holds. The answer must hold exactly the
 * record sent, at its place in that tree. An hour, because older records
 * may have been pruned (`moat serve --retain`), which no audit could tell
 * from a record removed by an intruder. docs/PROTOCOL.md, "Receipts".
 *
 * @module
 */

import { randomInt } from "node:crypto";
import { leafHash, verifyInclusion } from "../merkle.ts";
import { sha256 } from "../sha256.ts";
import type { ShipProof, ShipRecord } from "../protocol.ts";
import { decodeLeaf } from "../vault/leaf.ts";
import type { HeldCheckpoint } from "./witness.ts";

/** Records remembered for audits, in each of two half-hour generations. */
export const SPOT_CHECK_RESERVOIR = 512;
/** Records are sampled in generations this long; two are kept. */
export const SPOT_CHECK_GENERATION_MS = 30 * 60_000;

/** What the shipper keeps of a record it sent. */
export interface SentRecord {
  seq: number;
  ts: number;
  partial: boolean;
  /** SHA-256 of the line. */
  hash: Uint8Array;
  /** The line's length, so that a proof of it fits a frame. */
  length: number;
}

/** An audit asked and not yet answered. */
export interface PendingAudit {
  record: SentRecord;
  /** The checkpoint the proof must lead to. */
  checkpoint: HeldCheckpoint;
  /** Sequence number of leaf 0 in that tree. */
  first: number;
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a).equals(b);
}

/** One generation's sample. */
interface _Generation {
  start: number;
  seen: number;
  sample: SentRecord[];
}

/**
 * A uniform random sample of the records sent in each half hour (Vitter's
 * algorithm R), from which audits are drawn; the two latest half hours are
 * kept.
 */
export class SpotCheck {
  readonly #capacity: number;
  readonly #maxLine: number;
  readonly #now: () => number;
  #generations: _Generation[] = [];

  /**
   * @param options How many records to keep per generation, the longest
   * line whose proof fits the shipper's frames, and a clock (ms).
   */
  constructor(
    options: { capacity?: number; maxLine: number; now?: () => number },
  ) {
    this.#capacity = options.capacity ?? SPOT_CHECK_RESERVOIR;
    this.#maxLine = options.maxLine;
    this.#now = options.now ?? (() => performance.now());
  }

  /** Records held for audits. */
  get size(): number {
    this.#age();
    let n = 0;
    for (const g of this.#generations) n += g.sample.length;
    return n;
  }

  /** Starts a generation when the last is half an hour old; keeps two. */
  #age(): _Generation {
    const now = this.#now();
    let last = this.#generations[this.#generations.length - 1];
    if (last === undefined || now - last.start >= SPOT_CHECK_GENERATION_MS) {
      last = { start: now, seen: 0, sample: [] };
      this.#generations.push(last);
    }
    this.#generations = this.#generations.filter((g) =>
      now - g.start < 2 * SPOT_CHECK_GENERATION_MS
    ).slice(-2);
    return last;
  }

  /**
   * Considers records just sent for the sample.
   *
   * @param records The records.
   */
  offer(records: readonly ShipRecord[]): void {
    const g = this.#age();
    for (const r of records) {
      if (r.line.length > this.#maxLine) continue;
      g.seen++;
      let at = g.sample.length;
      if (at >= this.#capacity) {
        at = Math.floor(Math.random() * g.seen);
        if (at >= this.#capacity) continue;
      }
      g.sample[at] = {
        seq: r.seq,
        ts: r.ts,
        partial: r.partial,
        hash: sha256(r.line),
        length: r.line.length,
      };
    }
  }

  /**
   * Takes a random record of the sample that the held checkpoint covers.
   *
   * @param covered The highest sequence number the checkpoint covers.
   * @param first The sequence number of its leaf 0.
   * @returns The record, removed from the sample; undefined if none.
   */
  take(covered: number, first: number): SentRecord | undefined {
    this.#age();
    const eligible: [SentRecord[], number][] = [];
    for (const g of this.#generations) {
      g.sample.forEach((r, i) => {
        if (r.seq >= first && r.seq <= covered) eligible.push([g.sample, i]);
      });
    }
    if (eligible.length === 0) return undefined;
    const [sample, i] = eligible[randomInt(eligible.length)]!;
    return sample.splice(i, 1)[0];
  }
}

/**
 * Checks the vault's answer to an audit: the leaf must be the record sent
 * (sequence number, time, flags, line), of this log's source, at its index
 * in the tree of the checkpoint held when asked.
 *
 * @param proof The answer.
 * @param audit What was asked.
 * @returns Undefined if it holds, else what is wrong.
 */
export function checkAudit(
  proof: ShipProof,
  audit: PendingAudit,
): string | undefined {
  const { record, checkpoint } = audit;
  if (!proof.found) return "the vault cannot prove it";
  let leaf;
  try {
    leaf = decodeLeaf(proof.leaf);
  } catch (err) {
    return `its leaf is malformed (${(err as Error).message})`;
  }
  const source = /\/([0-9a-f]{64})$/.exec(checkpoint.origin)?.[1];
  if (
    source !== undefined && Buffer.from(leaf.source).toString("hex") !== source
  ) return "its leaf belongs to another source";
  if (
    leaf.seq !== record.seq || leaf.ts !== record.ts ||
    leaf.partial !== record.partial || !same(sha256(leaf.line), record.hash)
  ) return "the vault holds another record in its place (altered)";
  const index = record.seq - audit.first;
  if (
    !verifyInclusion(
      leafHash(proof.leaf),
      index,
      checkpoint.size,
      proof.path,
      checkpoint.root,
    )
  ) return "its proof does not lead to the checkpoint held";
  return undefined;
}
