/**
 * The shipper as a witness of its vault: it keeps the latest checkpoint the
 * vault signed for its source, and accepts a new one only if it is signed by
 * the same key and provably extends the one held. Anything else (a smaller
 * tree, another root at the same size, a failed proof, another key or log,
 * no signature at all) is a rollback or a fork, reported as `ERR_ROLLBACK`.
 * docs/PROTOCOL.md, "Receipts".
 *
 * @module
 */

import {
  type Checkpoint,
  openCheckpoint,
  parseVerifier,
  type Verifier,
} from "../checkpoint.ts";
import { Code, MoatError } from "../errors.ts";
import { verifyConsistency } from "../merkle.ts";
import type { ShipReceipt } from "../protocol.ts";
import { escapeText } from "../text.ts";

/** A checkpoint the shipper accepted: the note and what it says. */
export interface HeldCheckpoint extends Checkpoint {
  /** The signed note, as the vault sent it. */
  readonly note: string;
}

/** Where a witness keeps what it accepted (the shipper's state file). */
export interface WitnessStore {
  /** The pinned vault key and the held checkpoint, as last saved. */
  readonly vaultKey?: string | undefined;
  readonly checkpoint?: string | undefined;
  /** Keeps a newly accepted key and checkpoint, to be saved. */
  keep(vaultKey: string, checkpoint: string): void;
}

/** Options for {@linkcode Witness}. */
export interface WitnessOptions {
  /** The pinned key and held checkpoint, and where to keep new ones. */
  store: WitnessStore;
  /** The key the vault must sign with (`--vault-key`). */
  vaultKey?: string | undefined;
  /** The state file, named in reports. */
  stateFile: string;
}

/**
 * The error a shipper stops on when its vault rolled back, forked, changed
 * key or failed an audit: one line naming both checkpoints.
 *
 * @param what What is wrong, as a clause.
 * @param stateFile The state file, which keeps the held checkpoint.
 * @returns The error (exit 5).
 */
export function rollbackError(what: string, stateFile: string): MoatError {
  return new MoatError(
    Code.ERR_ROLLBACK,
    `ROLLBACK OR FORK: ${what}; stopped sending to this vault; the spool and the state "${
      escapeText(stateFile)
    }" are kept`,
  );
}

/**
 * A checkpoint as one phrase: `"origin" size 12 root <base64>`, its text
 * escaped (the origin comes from the vault).
 *
 * @param cp The checkpoint.
 * @returns The phrase.
 */
export function describeCheckpoint(cp: Checkpoint): string {
  return `"${escapeText(cp.origin)}" size ${cp.size} root ${
    escapeText(Buffer.from(cp.root).toString("base64"))
  }`;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a).equals(b);
}

/** The extension line a vault adds to a tree whose leaf 0 is not record 1. */
const FIRST_SEQ = "moat-first-seq ";

/**
 * The sequence number of a checkpoint's leaf 0: 1, or what its
 * `moat-first-seq F` extension line says (docs/VAULT.md).
 *
 * @param cp The checkpoint.
 * @returns The sequence number; NaN for a malformed line.
 */
export function firstSeqOf(cp: Checkpoint): number {
  for (const line of cp.extensions ?? []) {
    if (!line.startsWith(FIRST_SEQ)) continue;
    const text = line.slice(FIRST_SEQ.length);
    return /^[1-9][0-9]{0,15}$/.test(text) ? Number(text) : NaN;
  }
  return 1;
}

/**
 * Keeps a vault's key (pinned at first contact, like ssh's known_hosts, or
 * given) and the latest checkpoint it signed for one source, and checks
 * every new one against them. Nothing a vault sends makes it forget what it
 * holds: only an accepted, extending checkpoint replaces it.
 */
export class Witness {
  readonly #store: WitnessStore;
  readonly #stateFile: string;
  #key: Verifier | undefined;
  #held: HeldCheckpoint | undefined;
  /** The key offered on this connection, not yet pinned. */
  #offered: Verifier | undefined;
  #server = "";

  /**
   * Opens what the state holds, and checks it against `--vault-key`.
   *
   * @param options The store, `--vault-key`, the state file.
   * @throws {MoatError} `ERR_ROLLBACK` when `--vault-key` is not the key
   * pinned in the state; `ERR_CORRUPT` when the state's key or checkpoint
   * does not parse or verify.
   * @throws {MoatError} `ERR_CHECKPOINT` for a malformed `--vault-key`.
   */
  constructor(options: WitnessOptions) {
    this.#store = options.store;
    this.#stateFile = options.stateFile;
    const given = options.vaultKey === undefined
      ? undefined
      : parseVerifier(options.vaultKey);
    const saved = options.store.vaultKey;
    if (saved !== undefined) {
      try {
        this.#key = parseVerifier(saved);
        const note = options.store.checkpoint;
        if (note !== undefined) {
          const cp = openCheckpoint(note, this.#key);
          this.#held = { ...cp, note };
        }
      } catch (err) {
        throw new MoatError(
          Code.ERR_CORRUPT,
          `State file "${
            escapeText(this.#stateFile)
          }" holds a vault key or checkpoint that does not verify (${
            (err as Error).message
          })`,
          undefined,
          { cause: err },
        );
      }
    }
    if (given !== undefined && this.#key !== undefined) {
      if (given.text !== this.#key.text) {
        throw rollbackError(
          `--vault-key ${escapeText(given.text)} is not the key ${
            escapeText(this.#key.text)
          } this shipper pinned${
            this.#held
              ? ` with checkpoint ${describeCheckpoint(this.#held)}`
              : ""
          }`,
          this.#stateFile,
        );
      }
    }
    this.#key ??= given;
  }

  /** The tree size of the held checkpoint (0 if none). */
  get size(): number {
    return this.#held?.size ?? 0;
  }

  /** The held checkpoint, if any. */
  get held(): HeldCheckpoint | undefined {
    return this.#held;
  }

  /** The sequence number of the held tree's leaf 0 (1 without one). */
  get first(): number {
    return this.#held ? firstSeqOf(this.#held) : 1;
  }

  /**
   * The highest sequence number the held checkpoint covers: records up to
   * it may leave the spool.
   */
  get covered(): number {
    return this.#held ? firstSeqOf(this.#held) + this.#held.size - 1 : 0;
  }

  /** Whether the shipper has a vault key: a vault must then sign. */
  get keyed(): boolean {
    return this.#key !== undefined;
  }

  /**
   * Takes the key a vault offers in its ShipReady (undefined: it offers no
   * receipts).
   *
   * @param vaultKey The offered key.
   * @param server The vault's address, for reports.
   * @returns Whether receipts follow on this connection.
   * @throws {MoatError} `ERR_ROLLBACK` when the shipper has a key and the
   * vault offers none or another one.
   */
  offered(vaultKey: string | undefined, server: string): boolean {
    this.#server = server;
    this.#offered = undefined;
    if (vaultKey === undefined) {
      if (this.#key === undefined) return false;
      throw this.#fail(
        `the vault at ${escapeText(server)} sends no signed checkpoint, but ${
          this.#held
            ? `this shipper holds ${describeCheckpoint(this.#held)}`
            : `this shipper expects checkpoints signed by ${
              escapeText(this.#key.text)
            }`
        }`,
      );
    }
    let offered: Verifier;
    try {
      offered = parseVerifier(vaultKey);
    } catch (err) {
      throw this.#fail(
        `the vault at ${escapeText(server)} offers a malformed key (${
          (err as Error).message
        })`,
      );
    }
    if (this.#key !== undefined && offered.text !== this.#key.text) {
      throw this.#fail(
        `the vault at ${escapeText(server)} signs with key ${
          escapeText(offered.text)
        }, not the key ${escapeText(this.#key.text)}${this.#holding()}`,
      );
    }
    this.#offered = offered;
    return true;
  }

  /**
   * Checks a receipt: its note must be signed by the key, name the same log
   * as the held checkpoint, and extend it (RFC 9162 consistency proof), and
   * its tree must hold every record acknowledged so far. Then holds it and
   * hands it to the store (the key too, at first contact).
   *
   * @param receipt The receipt.
   * @param acked The highest sequence number the vault acknowledged.
   * @returns The new held checkpoint.
   * @throws {MoatError} `ERR_ROLLBACK` for anything that does not extend
   * the held checkpoint.
   */
  accept(receipt: ShipReceipt, acked: number): HeldCheckpoint {
    const key = this.#offered;
    if (key === undefined) {
      throw this.#fail("the vault sent a receipt it did not offer");
    }
    const where = `the vault at ${escapeText(this.#server)}`;
    let cp: Checkpoint;
    try {
      cp = openCheckpoint(receipt.note, key);
    } catch (err) {
      throw this.#fail(
        `${where} sent a checkpoint that does not verify (${
          (err as Error).message
        })${this.#holding()}`,
      );
    }
    const shown = `${where} showed checkpoint ${describeCheckpoint(cp)}`;
    const held = this.#held;
    if (held !== undefined) {
      const versus =
        `, which does not extend the checkpoint this shipper holds, ${
          describeCheckpoint(held)
        }`;
      if (
        cp.origin !== held.origin ||
        (cp.extensions ?? []).join("\n") !== (held.extensions ?? []).join("\n")
      ) {
        throw this.#fail(`${shown}${versus} (another log)`);
      }
      if (cp.size < held.size) {
        throw this.#fail(`${shown}${versus} (a smaller tree)`);
      }
      if (cp.size === held.size && !sameBytes(cp.root, held.root)) {
        throw this.#fail(`${shown}${versus} (another root at the same size)`);
      }
    }
    if (receipt.from !== this.size) {
      throw this.#fail(
        `${shown} with a proof from size ${receipt.from}, not from ${this.size}${this.#holding()}`,
      );
    }
    const proven = held === undefined
      ? receipt.proof.length === 0
      : verifyConsistency(
        held.size,
        cp.size,
        held.root,
        cp.root,
        receipt.proof,
      );
    if (!proven) {
      throw this.#fail(
        `${shown}${
          held === undefined
            ? ""
            : `, whose proof that it extends ${describeCheckpoint(held)} fails`
        }`,
      );
    }
    const first = firstSeqOf(cp);
    if (!Number.isSafeInteger(first)) {
      throw this.#fail(`${shown} with a malformed first-record line`);
    }
    if (first + cp.size - 1 < acked) {
      throw this.#fail(
        `${shown}, but acknowledged records up to ${acked}: more than it signs for`,
      );
    }
    const accepted: HeldCheckpoint = {
      origin: cp.origin,
      size: cp.size,
      root: cp.root,
      ...(cp.extensions !== undefined && { extensions: cp.extensions }),
      note: receipt.note,
    };
    if (held === undefined || cp.size !== held.size) {
      this.#key = key;
      this.#held = accepted;
      this.#store.keep(key.text, receipt.note);
    }
    return this.#held!;
  }

  /**
   * Reports a failure of the vault with the held checkpoint named.
   *
   * @param what What is wrong, as a clause.
   * @returns The error to throw.
   */
  fail(what: string): MoatError {
    return this.#fail(`${what}${this.#holding()}`);
  }

  #holding(): string {
    return this.#held
      ? `; this shipper holds ${describeCheckpoint(this.#held)}`
      : "";
  }

  #fail(what: string): MoatError {
    return rollbackError(what, this.#stateFile);
  }
}
