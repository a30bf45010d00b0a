/**
 * A witness: it keeps, for each log origin, the latest checkpoint it
 * cosigned, and cosigns a new one only if it extends that one (C2SP
 * `tlog-witness`). A vault rolled back, cut or forked after the witness saw
 * it can then no longer get a cosignature: the witness holds the larger
 * tree.
 *
 * The state lives in one folder (see docs/DEPLOY.md, "A witness"):
 *
 * - `witness.key` (0600), the cosigning key, a signed-note signer of type
 *   `tlog-cosignature/v1`, and `witness.pub`, its verifier key;
 * - `origins/<sha256 of the origin>.json`, one per origin: the vault key
 *   pinned at first contact, the size and root cosigned last, that
 *   checkpoint with the cosignature, and the peer that first sent it. Each
 *   is replaced atomically (temporary file, fsync, rename, fsync of the
 *   folder) before the cosignature leaves;
 * - `witness.lock`, held while a witness runs.
 *
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";
import { readdir, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import {
  cosign,
  COSIGNATURE_V1,
  ED25519,
  generateKey,
  openCheckpoint,
  parseCheckpointBody,
  parseSigner,
  parseVerifier,
  type Signer,
  splitNote,
  type Verifier,
} from "../checkpoint.ts";
import { verifyConsistency } from "../merkle.ts";
import {
  type CheckpointRef,
  MoatError,
  WitnessRefusedError,
} from "../errors.ts";
import {
  acquireLock,
  type Lock,
  makeDir,
  readTextIfExists,
  removeTempFiles,
  writeFileAtomic,
} from "../segment/fs.ts";
import type { WitnessAdd } from "../protocol.ts";
import { os } from "../builtins.ts";

/** The cosigning key's file in the state folder. */
export const KEY_FILE = "witness.key";
/** The verifier key's file in the state folder. */
export const PUBLIC_KEY_FILE = "witness.pub";
/** The folder of per-origin state files. */
export const ORIGINS_DIR = "origins";
const LOCK_FILE = "witness.lock";

/** Default {@linkcode WitnessOptions.maxOriginsPerPeer}. */
export const DEFAULT_MAX_ORIGINS_PER_PEER = 10_000;

/** Largest origin state file read back, in bytes (a request is at most 16 KiB). */
const ORIGIN_FILE_MAX = 64 * 1024;

const enc = new TextEncoder();

/** Options for {@linkcode openWitness}. */
export interface WitnessOptions {
  /**
   * The key name when a key is made (`--name`): signed-note rules, no
   * spaces or `+`. @default {the host name}
   */
  name?: string;
  /**
   * Vault keys accepted (verifier key strings); empty or absent: the first
   * key an origin shows is pinned for it (trust on first use).
   */
  vaultKeys?: readonly string[];
  /** Most origins one peer address may make the witness hold. @default {10_000} */
  maxOriginsPerPeer?: number;
  /** The clock of cosignature times. @default {Date.now} */
  now?: () => number;
}

/** What a witness holds for one origin. */
interface Held {
  /** The pinned vault key, as text. */
  key: string;
  size: number;
  root: Uint8Array;
  /** The peer address that first sent it (counts against its limit). */
  peer: string;
}

/** The answer to a {@linkcode Witness.prototype.add}. */
export type AddResult =
  | {
    kind: "cosigned";
    origin: string;
    /** The cosignature line, ending in a newline. */
    cosignature: string;
    /** The size the witness held before (0 for a new origin). */
    from: number;
    size: number;
    /** This was the origin's first checkpoint: its key is now pinned. */
    pinned: boolean;
  }
  | {
    kind: "conflict";
    origin: string;
    /** The size the witness holds: the vault retries with a proof from it. */
    size: number;
  };

/** A state folder opened by {@linkcode openWitness}. */
export interface OpenedWitness {
  witness: Witness;
  /** Whether its key was made now. */
  created: boolean;
}

function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("base64");
}

function ref(size: number, root: Uint8Array): CheckpointRef {
  return { size, root: b64(root) };
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

function originFile(origin: string): string {
  return createHash("sha256").update(origin).digest("hex") + ".json";
}

/**
 * A name for a new key from the host name: signed-note key names take no
 * spaces or `+`.
 */
function defaultName(): string {
  const host = os().hostname().replace(/[^\x21-\x2a\x2c-\x7e]/g, "").slice(
    0,
    100,
  );
  return `${host || "moat"}-witness`;
}

/**
 * Makes the cosigning key of a state folder if it has none.
 *
 * @param dir The state folder; created (0700) if missing.
 * @param name The key name for a new key.
 * @returns The signer and whether it was made now.
 */
async function loadOrMakeKey(
  dir: string,
  name: string | undefined,
): Promise<{ signer: Signer; created: boolean }> {
  const keyPath = join(dir, KEY_FILE);
  await removeTempFiles(keyPath);
  await removeTempFiles(join(dir, PUBLIC_KEY_FILE));
  const text = await readTextIfExists(keyPath);
  if (text !== undefined) {
    let signer: Signer;
    try {
      signer = parseSigner(text);
    } catch (err) {
      throw new MoatError(
        "ERR_CHECKPOINT",
        `"${keyPath}" is not a witness key: ${(err as Error).message}`,
        undefined,
        { cause: err },
      );
    }
    if (signer.type !== COSIGNATURE_V1) {
      throw new MoatError(
        "ERR_CHECKPOINT",
        `"${keyPath}" is not a witness cosignature key`,
      );
    }
    return { signer, created: false };
  }
  const made = generateKey(name ?? defaultName(), COSIGNATURE_V1);
  await writeFileAtomic(keyPath, enc.encode(made.signer + "\n"));
  await writeFileAtomic(
    join(dir, PUBLIC_KEY_FILE),
    enc.encode(made.verifier + "\n"),
  );
  return { signer: parseSigner(made.signer), created: true };
}

/** Reads one origin's state file, failing closed on anything odd. */
function parseOriginFile(path: string, text: string): [string, Held] {
  const bad = (why: string) =>
    new MoatError(
      "ERR_CORRUPT",
      `Witness state file "${path}" is damaged (${why}): restore it from a backup; the witness will not start without it`,
    );
  if (text.length > ORIGIN_FILE_MAX) throw bad("too large");
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(text);
  } catch {
    throw bad("not JSON");
  }
  const { origin, key, checkpoint, peer } = o;
  if (
    typeof origin !== "string" || typeof key !== "string" ||
    typeof checkpoint !== "string" || typeof peer !== "string"
  ) throw bad("a field is missing");
  let cp;
  try {
    parseVerifier(key);
    cp = parseCheckpointBody(splitNote(checkpoint).body);
  } catch (err) {
    throw bad((err as Error).message);
  }
  if (cp.origin !== origin || originFile(origin) !== path.split("/").pop()) {
    throw bad("its origin does not match its name");
  }
  return [origin, { key, size: cp.size, root: cp.root, peer }];
}

/**
 * Opens a witness's state folder: takes its lock, makes its key if it has
 * none, and reads every origin it holds. A damaged origin file stops it
 * (fail closed: forgetting an origin would let a rolled-back log start
 * over).
 *
 * @param dir The state folder; created (0700) if missing.
 * @param options Key name, accepted vault keys, limits, clock.
 * @returns The witness, and whether its key was made now.
 * @throws {MoatError} `ERR_LOCKED` while another witness uses the folder;
 * `ERR_CORRUPT` for a damaged origin file; `ERR_CHECKPOINT` for a bad key.
 */
export async function openWitness(
  dir: string,
  options: WitnessOptions = {},
): Promise<OpenedWitness> {
  const root = resolve(dir);
  await makeDir(root, 0o700);
  const lock = await acquireLock(join(root, LOCK_FILE), `Witness "${root}"`);
  try {
    const { signer, created } = await loadOrMakeKey(root, options.name);
    const originsDir = join(root, ORIGINS_DIR);
    await makeDir(originsDir, 0o700);
    const held = new Map<string, Held>();
    for (const name of await readdir(originsDir)) {
      const path = join(originsDir, name);
      if (name.startsWith(".") && name.includes(".tmp-")) {
        // Left by a crash mid-write; the file it was to replace is intact.
        await rm(path, { force: true });
        continue;
      }
      if (!name.endsWith(".json")) continue;
      const text = await readTextIfExists(path);
      if (text === undefined) continue;
      const [origin, h] = parseOriginFile(path, text);
      held.set(origin, h);
    }
    const vaultKeys = (options.vaultKeys ?? []).map((k) => parseVerifier(k));
    for (const k of vaultKeys) {
      if (k.type !== ED25519) {
        throw new MoatError(
          "ERR_CHECKPOINT",
          `Vault key ${k.name} is not an Ed25519 log key`,
        );
      }
    }
    return {
      witness: new Witness({
        dir: root,
        lock,
        signer,
        held,
        vaultKeys: new Set(vaultKeys.map((k) => k.text)),
        maxOriginsPerPeer: options.maxOriginsPerPeer ??
          DEFAULT_MAX_ORIGINS_PER_PEER,
        now: options.now ?? Date.now,
      }),
      created,
    };
  } catch (err) {
    await lock.release();
    throw err;
  }
}

/**
 * A witness over an opened state folder (see {@linkcode openWitness}).
 * Requests for one origin are handled one at a time, so two connections
 * cannot both extend the same checkpoint in different ways.
 */
export class Witness {
  #dir: string;
  #lock: Lock;
  #signer: Signer;
  #held: Map<string, Held>;
  #perPeer = new Map<string, number>();
  #vaultKeys: Set<string>;
  #maxOriginsPerPeer: number;
  #now: () => number;
  /** The request in progress per origin; the next one waits for it. */
  #busy = new Map<string, Promise<unknown>>();

  /** @param init What {@linkcode openWitness} read. */
  constructor(init: {
    dir: string;
    lock: Lock;
    signer: Signer;
    held: Map<string, Held>;
    vaultKeys: Set<string>;
    maxOriginsPerPeer: number;
    now: () => number;
  }) {
    this.#dir = init.dir;
    this.#lock = init.lock;
    this.#signer = init.signer;
    this.#held = init.held;
    this.#vaultKeys = init.vaultKeys;
    this.#maxOriginsPerPeer = init.maxOriginsPerPeer;
    this.#now = init.now;
    for (const h of this.#held.values()) {
      this.#perPeer.set(h.peer, (this.#perPeer.get(h.peer) ?? 0) + 1);
    }
  }

  /** The state folder (absolute). */
  get dir(): string {
    return this.#dir;
  }

  /** The verifier key of the cosignatures (`name+id+base64`). */
  get verifier(): string {
    return this.#signer.verifier;
  }

  /** Origins held. */
  get origins(): number {
    return this.#held.size;
  }

  /**
   * Checks a vault's checkpoint against the one held for its origin and, if
   * it extends it, stores it durably and cosigns it.
   *
   * @param request The vault key, the size the vault believes is held, the
   * consistency proof from it, and the signed checkpoint.
   * @param peer The sender's address (for `maxOriginsPerPeer`).
   * @returns The cosignature, or the size held when the request's `old`
   * is not it (the vault retries with a proof from that size).
   * @throws {WitnessRefusedError} When the key is not the pinned one (or not
   * accepted), the signature does not verify, or the checkpoint does not
   * extend the one held: smaller, another root at the same size, or a
   * failed proof.
   * @throws {MoatError} `ERR_TOO_MANY_ORIGINS` for a new origin beyond the
   * peer's limit.
   */
  add(request: WitnessAdd, peer: string): Promise<AddResult> {
    // The origin, for the lock; checked for real by #add.
    let origin: string;
    try {
      origin = parseCheckpointBody(splitNote(request.checkpoint).body).origin;
    } catch (err) {
      return Promise.reject(
        new WitnessRefusedError(
          `malformed checkpoint: ${(err as Error).message}`,
          { origin: "" },
          { cause: err },
        ),
      );
    }
    const before = this.#busy.get(origin) ?? Promise.resolve();
    const run = before.catch(() => {}).then(() => this.#add(request, peer));
    const mine = run.catch(() => {});
    this.#busy.set(origin, mine);
    mine.then(() => {
      if (this.#busy.get(origin) === mine) this.#busy.delete(origin);
    });
    return run;
  }

  async #add(request: WitnessAdd, peer: string): Promise<AddResult> {
    const { body } = splitNote(request.checkpoint);
    const offered = parseCheckpointBody(body);
    const { origin } = offered;
    const offer = ref(offered.size, offered.root);
    const held = this.#held.get(origin);
    const heldRef = held && ref(held.size, held.root);
    const refuse = (reason: string, cause?: unknown): never => {
      throw new WitnessRefusedError(
        reason,
        { origin, held: heldRef, offered: offer },
        cause === undefined ? undefined : { cause },
      );
    };
    let key: Verifier;
    try {
      key = parseVerifier(request.key);
    } catch (err) {
      return refuse(`bad vault key: ${(err as Error).message}`, err);
    }
    if (key.type !== ED25519) refuse("the vault key is not an Ed25519 log key");
    if (held !== undefined && held.key !== key.text) {
      refuse(
        `signed by another key (${key.name}+${
          Buffer.from(key.id).toString("hex")
        }) than the one pinned for this origin`,
      );
    }
    if (this.#vaultKeys.size > 0 && !this.#vaultKeys.has(key.text)) {
      refuse(`vault key ${key.name} is not one this witness accepts`);
    }
    try {
      openCheckpoint(request.checkpoint, key);
    } catch (err) {
      refuse(`signature: ${(err as Error).message}`, err);
    }
    const heldSize = held?.size ?? 0;
    if (held !== undefined) {
      if (offered.size < held.size) refuse("smaller tree: a rollback");
      if (offered.size === held.size && !sameBytes(offered.root, held.root)) {
        refuse("another root at the same size: a fork");
      }
    }
    if (request.old !== heldSize) {
      return { kind: "conflict", origin, size: heldSize };
    }
    if (
      held !== undefined && offered.size > held.size &&
      !verifyConsistency(
        held.size,
        offered.size,
        held.root,
        offered.root,
        request.proof,
      )
    ) {
      refuse(`the consistency proof from size ${held.size} fails: a fork`);
    }
    let counted = false;
    if (held === undefined) {
      const n = this.#perPeer.get(peer) ?? 0;
      if (n >= this.#maxOriginsPerPeer) {
        throw new MoatError(
          "ERR_TOO_MANY_ORIGINS",
          `Cannot hold another origin for peer "${peer}": it has ${this.#maxOriginsPerPeer} (--max-origins-per-peer)`,
        );
      }
      this.#perPeer.set(peer, n + 1);
      counted = true;
    }
    const time = Math.floor(this.#now() / 1000);
    const cosignature = cosign(body, this.#signer, time);
    const next: Held = {
      key: key.text,
      size: offered.size,
      root: offered.root,
      peer: held?.peer ?? peer,
    };
    try {
      await writeFileAtomic(
        join(this.#dir, ORIGINS_DIR, originFile(origin)),
        enc.encode(
          JSON.stringify({
            origin,
            key: next.key,
            size: next.size,
            root: b64(next.root),
            checkpoint: request.checkpoint + cosignature,
            peer: next.peer,
            at: new Date(time * 1000).toISOString(),
          }) + "\n",
        ),
      );
    } catch (err) {
      if (counted) this.#perPeer.set(peer, (this.#perPeer.get(peer) ?? 1) - 1);
      throw err;
    }
    // Held in memory only once durable: a crash before this point leaves
    // the old checkpoint on disk, and no cosignature went out.
    this.#held.set(origin, next);
    return {
      kind: "cosigned",
      origin,
      cosignature,
      from: heldSize,
      size: offered.size,
      pinned: held === undefined,
    };
  }

  /**
   * Waits for requests in progress and releases the state folder's lock.
   *
   * @returns When released.
   */
  async close(): Promise<void> {
    await Promise.allSettled([...this.#busy.values()]);
    await this.#lock.release();
  }
}
