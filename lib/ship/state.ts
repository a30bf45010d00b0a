/**
 * The shipper's state file: which source it ships as, the last sequence
 * number the server acknowledged, and, for each input file, the position
 * after the last line whose record has left the spool. Written atomically
 * (temporary file, fsync, rename, directory fsync). Format: `docs/VAULT.md`.
 *
 * @module
 */

import { createHash, randomBytes } from "node:crypto";
import { isAbsolute, join } from "node:path";
import process from "node:process";
import { UsageError } from "../errors.ts";
import { corruptError } from "../segment/codec.ts";
import { readTextIfExists, writeFileAtomic } from "../segment/fs.ts";
import type { FilePosition } from "./follow.ts";

/** State file format version. */
export const STATE_VERSION = 1;
/**
 * The version of a state that holds a vault key and checkpoint: an older
 * moat refuses it rather than drop them when it saves.
 */
export const STATE_VERSION_RECEIPTS = 2;
/** Longest vault key or checkpoint note a state may hold. */
const MAX_RECEIPT_TEXT = 16 * 1024;

/** One input (a followed file, or `-` for standard input). */
export interface StateInput {
  /** Absolute path, or `-`. */
  path: string;
  /** Position after the last line of this input no longer in the spool. */
  position?: FilePosition;
}

/** Contents of a state file. */
export interface ShipState {
  /**
   * {@linkcode STATE_VERSION}, or {@linkcode STATE_VERSION_RECEIPTS} once it
   * holds a vault key.
   */
  version: number;
  /** The source name shipped as. */
  source: string;
  /** Random id of this record stream, made when the state was created. */
  stream: string;
  /** Last sequence number the server acknowledged (as last saved). */
  acked: number;
  /** Inputs in registration order; a spool record names one by its index. */
  inputs: StateInput[];
  /** The vault's checkpoint key, pinned at first contact or `--vault-key`. */
  vaultKey?: string;
  /** The latest checkpoint accepted from the vault: its signed note. */
  checkpoint?: string;
}

/**
 * Creates the state of a new stream.
 *
 * @param source The source name.
 * @returns A fresh state with a random stream id, nothing acknowledged.
 */
export function newShipState(source: string): ShipState {
  return {
    version: STATE_VERSION,
    source,
    stream: randomBytes(16).toString("hex"),
    acked: 0,
    inputs: [],
  };
}

/**
 * Reads a state file.
 *
 * @param file The state file.
 * @returns The state, or undefined if the file does not exist.
 * @throws {MoatError} `ERR_CORRUPT` if the file is not a valid state file.
 */
export async function readShipState(
  file: string,
): Promise<ShipState | undefined> {
  const text = await readTextIfExists(file);
  if (text === undefined) return undefined;
  try {
    return _parse(JSON.parse(text));
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw corruptError(file, 0, `not a valid state file (${reason})`);
  }
}

/**
 * True for a non-negative safe integer.
 *
 * @param value Anything.
 * @returns Whether it is a count.
 */
export function _isCount(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) &&
    value >= 0;
}

function _parse(data: unknown): ShipState {
  const s = data as Partial<ShipState> | null;
  if (typeof s !== "object" || s === null) throw new TypeError("not an object");
  if (s.version !== STATE_VERSION && s.version !== STATE_VERSION_RECEIPTS) {
    throw new TypeError(`version ${String(s.version)} is not supported`);
  }
  if (typeof s.source !== "string" || typeof s.stream !== "string") {
    throw new TypeError("source or stream is missing");
  }
  if (!_isCount(s.acked)) throw new TypeError("acked is not a count");
  if (!Array.isArray(s.inputs)) throw new TypeError("inputs is not a list");
  const inputs = s.inputs.map((raw: unknown): StateInput => {
    const input = raw as { path?: unknown; position?: Partial<FilePosition> };
    if (typeof input?.path !== "string") {
      throw new TypeError("an input has no path");
    }
    const p = input.position;
    if (p === undefined) return { path: input.path };
    if (!_isCount(p.dev) || !_isCount(p.ino) || !_isCount(p.offset)) {
      throw new TypeError(`input "${input.path}" has a bad position`);
    }
    return {
      path: input.path,
      position: { dev: p.dev, ino: p.ino, offset: p.offset },
    };
  });
  const state: ShipState = {
    version: STATE_VERSION,
    source: s.source,
    stream: s.stream,
    acked: s.acked,
    inputs,
  };
  if (s.version === STATE_VERSION_RECEIPTS) {
    if (!_isText(s.vaultKey)) throw new TypeError("vaultKey is not text");
    if (s.checkpoint !== undefined && !_isText(s.checkpoint)) {
      throw new TypeError("checkpoint is not text");
    }
    state.version = STATE_VERSION_RECEIPTS;
    state.vaultKey = s.vaultKey;
    if (s.checkpoint !== undefined) state.checkpoint = s.checkpoint;
  }
  return state;
}

function _isText(value: unknown): value is string {
  return typeof value === "string" && value.length > 0 &&
    value.length <= MAX_RECEIPT_TEXT;
}

/**
 * Writes a state file atomically.
 *
 * @param file The state file.
 * @param state The state.
 * @returns Resolves once the new state is durable.
 * @throws {Error} A system error; the old file is then untouched.
 */
export async function writeShipState(
  file: string,
  state: ShipState,
): Promise<void> {
  await writeFileAtomic(
    file,
    new TextEncoder().encode(JSON.stringify(state, null, 1) + "\n"),
  );
}

/**
 * The default state file of a shipper: `$XDG_STATE_HOME/moat/` (if set to an
 * absolute path) or `~/.local/state/moat/`, then
 * `ship-<source>-<hash>.json`, where the hash covers source and server so
 * that each pair gets its own file.
 *
 * @example Usage
 * ```ts
 * import { defaultStatePath } from "./state.ts";
 * import assert from "node:assert/strict";
 * const path = defaultStatePath({
 *   source: "web1",
 *   server: "10.0.0.1:4320",
 *   env: { HOME: "/home/ann" },
 * });
 * assert.match(path, /^\/home\/ann\/\.local\/state\/moat\/ship-web1-[0-9a-f]{12}\.json$/);
 * ```
 *
 * @param options The source name, the server (`host:port`), and the
 * environment to read (default: the process's).
 * @returns An absolute path.
 * @throws {UsageError} If neither `XDG_STATE_HOME` nor `HOME` is usable.
 */
export function defaultStatePath(options: {
  source: string;
  server?: string;
  env?: Record<string, string | undefined>;
}): string {
  const env = options.env ?? process.env;
  const xdg = env.XDG_STATE_HOME;
  const home = env.HOME;
  let dir: string;
  if (xdg !== undefined && isAbsolute(xdg)) {
    dir = join(xdg, "moat");
  } else if (home !== undefined && isAbsolute(home)) {
    dir = join(home, ".local", "state", "moat");
  } else {
    throw new UsageError(
      "Cannot choose a state file: set XDG_STATE_HOME or HOME, or pass --state",
    );
  }
  const hash = createHash("sha256")
    .update(JSON.stringify([options.source, options.server ?? ""]))
    .digest("hex")
    .slice(0, 12);
  const slug = options.source.slice(0, 40).replace(/[^A-Za-z0-9._-]/g, "_");
  return join(dir, `ship-${slug}-${hash}.json`);
}
