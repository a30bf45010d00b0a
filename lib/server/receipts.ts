/**
 * Receipts for a shipper: the source's signed checkpoint and the proof that
 * it extends the one the shipper holds, sent on the ShipAck path, and the
 * answers to its audits (inclusion proofs). docs/PROTOCOL.md, "Receipts".
 *
 * @module
 */

import { encodeFrame } from "../framer.ts";
import {
  decodeShipProve,
  encodeShipProof,
  encodeShipReceipt,
  type Hello,
  Kind,
  SHIP_PROOF_HASHES_MAX,
  SHIP_RECEIPT_MAX,
  type ShipProof,
} from "../protocol.ts";
import { Code, ProtocolError } from "../errors.ts";
import type { SourceKey } from "../vault/store.ts";
import type { Outbox } from "./outbox.ts";
import { errorCode, errorMessage, type Session } from "./session.ts";

/** Receipts are sent at most this often per connection, beyond the first and the last. */
export const RECEIPT_INTERVAL_MS = 1000;

/** What receipts need of the vault (lib/vault/store.ts). */
export interface CheckpointVault {
  /** The verifier key of the vault's checkpoints; absent if it signs none. */
  readonly checkpointVerifier?: string | undefined;
  /** The latest signed checkpoint of a source, over durable records only. */
  checkpoint(
    key: SourceKey,
  ): Promise<{ note: string; size: number; root: Uint8Array }>;
  /** RFC 9162 consistency proof between two sizes of a source's tree. */
  consistencyProof(
    key: SourceKey,
    from: number,
    to: number,
  ): Uint8Array[] | Promise<Uint8Array[]>;
  /** A record's leaf bytes, leaf index and audit path in the tree of `size`. */
  inclusionProof(
    key: SourceKey,
    seq: number,
    size: number,
  ):
    | { leaf: Uint8Array; index: number; path: Uint8Array[] }
    | Promise<{ leaf: Uint8Array; index: number; path: Uint8Array[] }>;
}

/** Whether a proof failed because the vault lacks what was asked. */
function cannotProve(err: unknown): boolean {
  if (err instanceof RangeError) return true;
  const code = (err as { code?: unknown } | null)?.code;
  return code === Code.ERR_NO_SOURCE || code === Code.ERR_CORRUPT;
}

/**
 * The verifier key to offer a shipper in its ShipReady, or undefined: when
 * it did not ask for receipts (an older shipper), when its frame limit is
 * below the largest receipt, or when the vault signs no checkpoints.
 *
 * @param vault The vault.
 * @param hello The shipper's Hello.
 * @returns The key, or undefined for no receipts.
 */
export function receiptKey(
  vault: CheckpointVault,
  hello: Hello,
): string | undefined {
  if (hello.receipts === undefined) return undefined;
  if (hello.maxFrameSize < SHIP_RECEIPT_MAX) return undefined;
  const key = vault.checkpointVerifier;
  return key !== undefined && key.length > 0 ? key : undefined;
}

/**
 * Sends one shipper's receipts. Every frame bound for the shipper after its
 * ShipReady goes through {@linkcode ShipReceipts.push}, so a receipt is
 * never behind an ack it does not cover: acks that become due while a
 * checkpoint is being read wait behind it.
 *
 * When: one at once (for the size the Hello named), one after an ack when
 * the last was at least {@linkcode RECEIPT_INTERVAL_MS} ago, one when that
 * interval ends if acks came meanwhile, and one for each ShipSync (the
 * shipper's spool is full, or it is done). None repeats the size of the
 * one before, so a shipper gets at most one per batch it sent.
 */
export class ShipReceipts {
  readonly #s: Session;
  readonly #vault: CheckpointVault;
  readonly #key: SourceKey;
  readonly #out: Outbox;
  readonly #maxFrameSize: number;
  /** The size the next consistency proof starts from. */
  #from: number;
  #sent = false;
  #lastAt = -Infinity;
  #busy: Promise<void> | undefined;
  #held: Uint8Array[] = [];
  #heldBytes = 0;
  #ackedSince = false;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;

  /**
   * @param s The session.
   * @param options The vault, the source, the outbox of acks, and the
   * shipper's Hello (the size it holds, its frame limit).
   */
  constructor(
    s: Session,
    options: {
      vault: CheckpointVault;
      key: SourceKey;
      out: Outbox;
      hello: Hello;
    },
  ) {
    this.#s = s;
    this.#vault = options.vault;
    this.#key = options.key;
    this.#out = options.out;
    this.#from = options.hello.receipts ?? 0;
    this.#maxFrameSize = options.hello.maxFrameSize;
    this.#send();
  }

  /**
   * Queues a frame for the shipper (an ack), behind a receipt being made.
   *
   * @param frame The encoded frame.
   */
  push(frame: Uint8Array): void {
    this.#ackedSince = true;
    this.#emit(frame);
    if (this.#busy !== undefined || this.#closed) return;
    const wait = this.#lastAt + RECEIPT_INTERVAL_MS - performance.now();
    if (wait <= 0) this.#send();
    else this.#timer ??= setTimeout(() => this.#due(), wait);
  }

  /**
   * Answers a ShipProve: the record's leaf and audit path, or "cannot
   * prove" when the vault has no such record in a tree of that size or the
   * answer would not fit the shipper's frames.
   *
   * @param payload The ShipProve payload.
   * @throws {ProtocolError} For a malformed request.
   */
  async prove(payload: Uint8Array): Promise<void> {
    const { seq, size } = decodeShipProve(payload);
    let proof: ShipProof = {
      seq,
      size,
      found: false,
      leaf: new Uint8Array(0),
      path: [],
    };
    if (seq <= size) {
      try {
        const p = await this.#vault.inclusionProof(this.#key, seq, size);
        const bytes = 22 + p.leaf.length + 32 * p.path.length;
        if (
          bytes <= this.#maxFrameSize && p.path.length <= SHIP_PROOF_HASHES_MAX
        ) {
          proof = { seq, size, found: true, leaf: p.leaf, path: p.path };
        }
      } catch (err) {
        // A size beyond the tree, a record it lacks, a record on disk that
        // does not match its leaf: the vault cannot prove it, and says so.
        // A system error is not the shipper's to judge: it ends the session.
        if (!cannotProve(err)) throw err;
      }
    }
    this.#emit(
      encodeFrame({ type: Kind.ShipProof, payload: encodeShipProof(proof) }),
    );
  }

  /**
   * Answers a ShipSync: a receipt as soon as the one being made (if any)
   * is out, if the tree grew since.
   *
   * @param payload The ShipSync payload (empty).
   * @throws {ProtocolError} For a payload.
   */
  async sync(payload: Uint8Array): Promise<void> {
    if (payload.length !== 0) {
      throw new ProtocolError("Cannot decode ship sync: it has a payload");
    }
    await this.#busy;
    if (!this.#closed && this.#busy === undefined) this.#send();
  }

  /** Bytes queued for the shipper and not yet written, held ones included. */
  get pending(): number {
    return this.#out.pending + this.#heldBytes;
  }

  /**
   * Waits for what is queued, held frames included.
   *
   * @returns When everything queued so far was written (or failed).
   */
  async flush(): Promise<void> {
    await this.#busy;
    await this.#out.flush();
  }

  /** Sends nothing more. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #emit(frame: Uint8Array): void {
    if (this.#busy === undefined) return void this.#out.push(frame);
    this.#held.push(frame);
    this.#heldBytes += frame.length;
  }

  #due(): void {
    this.#timer = undefined;
    if (this.#ackedSince && this.#busy === undefined && !this.#closed) {
      this.#send();
    }
  }

  #send(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#ackedSince = false;
    // The first receipt is the connection's: the rate starts after it.
    const first = !this.#sent;
    this.#busy = this.#make().finally(() => {
      this.#busy = undefined;
      if (!first) this.#lastAt = performance.now();
      const held = this.#held;
      this.#held = [];
      this.#heldBytes = 0;
      for (const frame of held) this.#out.push(frame);
      // Acks that came meanwhile get theirs when the interval allows.
      if (this.#ackedSince && !this.#closed) {
        const wait = this.#lastAt + RECEIPT_INTERVAL_MS - performance.now();
        this.#timer ??= setTimeout(() => this.#due(), Math.max(0, wait));
      }
    });
  }

  async #make(): Promise<void> {
    try {
      const cp = await this.#vault.checkpoint(this.#key);
      if (this.#closed && this.#sent) return;
      if (this.#sent && cp.size === this.#from) return;
      // A shipper that holds more than the vault has: no proof can exist,
      // and it will say so.
      const proof = this.#from > 0 && this.#from < cp.size
        ? await this.#vault.consistencyProof(this.#key, this.#from, cp.size)
        : [];
      const payload = encodeShipReceipt({
        from: this.#from,
        note: cp.note,
        proof,
      });
      this.#out.push(encodeFrame({ type: Kind.ShipReceipt, payload }));
      this.#from = cp.size;
      this.#sent = true;
    } catch (err) {
      // The shipper keeps everything it has no receipt for, and reconnects.
      this.#s.server.audit.write("error", {
        peer: this.#s.peer,
        name: this.#s.name,
        source: this.#key.name,
        code: errorCode(err),
        message: errorMessage(err),
        during: "receipt",
      });
      this.#closed = true;
      this.#s.close();
    }
  }
}
