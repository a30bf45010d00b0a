/**
 * Source keys: who wrote a vault source. A key is the peer's address as the
 * server saw it, the identity the peer authenticated with (if any), and the
 * name the shipper gave; the first two come from the server, never from the
 * shipper. Two hosts never share a source, even with a shared token. What
 * each part holds and how a key is shown: `docs/VAULT.md`, "Source keys".
 *
 * @module
 */

import { createHash } from "node:crypto";
import { SourceNameError } from "../errors.ts";
import { escapeText } from "../text.ts";

/** Who wrote a source. */
export interface SourceKey {
  /**
   * The peer's address without port (IPv4-mapped IPv6 shown as IPv4). In a
   * source written before keys had an identity, this may instead hold the
   * identity alone (`token:NAME`, `cert:sha256:HEX`).
   */
  readonly peer: string;
  /**
   * The identity the peer authenticated with: `token:NAME`,
   * `cert:sha256:HEX`, or both separated by a space. Absent for a peer
   * that did not authenticate, and in sources written before keys had one.
   */
  readonly identity?: string;
  /** The source name the shipper sent. */
  readonly name: string;
}

const LIMIT = 1024;
// deno-lint-ignore no-control-regex -- matching controls is the point
const CONTROL = /[\x00-\x1f\x7f]/;
// deno-lint-ignore no-control-regex -- matching controls is the point
const BAD_PEER = /[\x00-\x20\x7f/[\]]/;
// deno-lint-ignore no-control-regex -- matching controls is the point
const BAD_IDENTITY = /[\x00-\x1f\x7f/[\]]/;
const SLUG_UNSAFE = /[^A-Za-z0-9._-]/g;

/**
 * Builds the key of a source from what the server knows about the peer and
 * the name the shipper sent. The vault checks it when the source is created
 * ({@linkcode checkNewSourceKey}).
 *
 * @example An authenticated and an anonymous peer
 * ```ts
 * import { sourceKey, sourceLabel } from "./_key.ts";
 * import assert from "node:assert/strict";
 * const signed = sourceKey({ address: "10.0.0.5", identity: "token:web" }, "app");
 * assert.equal(sourceLabel(signed), "10.0.0.5[token:web]/app");
 * const plain = sourceKey({ address: "10.0.0.6", identity: undefined }, "app");
 * assert.deepEqual(plain, { peer: "10.0.0.6", name: "app" });
 * ```
 *
 * @param peer The peer's address as the server saw it, and the identity it
 * authenticated with (undefined if none).
 * @param name The source name the shipper sent.
 * @returns The key.
 */
export function sourceKey(
  peer: { address: string; identity?: string | undefined },
  name: string,
): SourceKey {
  return peer.identity === undefined
    ? { peer: peer.address, name }
    : { peer: peer.address, identity: peer.identity, name };
}

/**
 * Checks the shape of any key, including those of sources written by
 * earlier versions (read back from `source.json`).
 *
 * @param key An untrusted key.
 * @throws {TypeError} If a part is not a string, the name is empty, or a
 * part is longer than 1024 characters.
 */
export function checkSourceKey(key: SourceKey): void {
  if (
    typeof key?.peer !== "string" || typeof key.name !== "string" ||
    (key.identity !== undefined && typeof key.identity !== "string")
  ) {
    throw new TypeError(
      "Invalid source: peer, identity and name must be strings",
    );
  }
  if (key.name.length === 0) {
    throw new TypeError("Invalid source: name is empty");
  }
  if (
    key.peer.length > LIMIT || key.name.length > LIMIT ||
    (key.identity?.length ?? 0) > LIMIT
  ) {
    throw new TypeError(
      `Invalid source: peer, identity and name must be at most ${LIMIT} characters`,
    );
  }
}

/**
 * Checks a key the vault is about to create a source for. Stricter than
 * {@linkcode checkSourceKey}, so that every new source has an unambiguous
 * label: the name holds no `/` and no control character, the address is
 * not empty and holds none of `/ [ ]`, white space or controls, and the
 * identity holds none of `/ [ ]` or controls.
 *
 * @param key The key.
 * @throws {SourceNameError} For a name the vault refuses (the message
 * names no server path and may go to the peer).
 * @throws {TypeError} For a malformed key, address or identity.
 */
export function checkNewSourceKey(key: SourceKey): void {
  checkSourceKey(key);
  if (key.name.includes("/") || CONTROL.test(key.name)) {
    throw new SourceNameError(
      `Invalid source name "${
        escapeText(key.name)
      }": it must not contain "/" or control characters`,
    );
  }
  if (key.peer.length === 0 || BAD_PEER.test(key.peer)) {
    throw new TypeError(
      `Invalid source: address "${escapeText(key.peer)}" is not an address`,
    );
  }
  if (
    key.identity !== undefined &&
    (key.identity.length === 0 || BAD_IDENTITY.test(key.identity))
  ) {
    throw new TypeError(
      `Invalid source: identity "${
        escapeText(key.identity)
      }" is empty or contains "/", "[", "]" or a control character`,
    );
  }
}

/**
 * The 32-byte identity of a source in seals and chains: SHA-256 over JSON
 * `[peer, name]`, or `[peer, name, identity]` for a key with an identity
 * (so every key written before identities existed keeps its hash). The
 * directory name carries the first 16 bytes of it in hex.
 *
 * @param key The source.
 * @returns The hash.
 */
export function sourceHash(key: SourceKey): Uint8Array {
  return createHash("sha256").update(_hashed(key)).digest();
}

function _hashed(key: SourceKey): string {
  return JSON.stringify(
    key.identity === undefined
      ? [key.peer, key.name]
      : [key.peer, key.name, key.identity],
  );
}

/**
 * The directory name of a source: a readable slug of peer and name (every
 * character outside `[A-Za-z0-9._-]`, and a leading dot, replaced by `_`,
 * each part cut to 40 characters) and 32 hex digits of
 * {@linkcode sourceHash}, so distinct keys get distinct names and no key can
 * climb out of the sources directory.
 *
 * @example Usage
 * ```ts
 * import { sourceDirName } from "./_key.ts";
 * import assert from "node:assert/strict";
 * const name = sourceDirName({ peer: "::1", name: "../../etc" });
 * assert.match(name, /^__1~_\._\.\._etc~[0-9a-f]{32}$/);
 * ```
 *
 * @param key The source key.
 * @returns A safe file name of at most 115 bytes.
 */
export function sourceDirName(key: SourceKey): string {
  const hash = createHash("sha256").update(_hashed(key)).digest("hex");
  return `${_slug(key.peer)}~${_slug(key.name)}~${hash.slice(0, 32)}`;
}

function _slug(text: string): string {
  // Never a leading dot: names starting with "." are the vault's own temporaries.
  return text.slice(0, 40).replace(SLUG_UNSAFE, "_").replace(/^\./, "_");
}

/**
 * The display label of a source: `peer/name`, or `peer[identity]/name` for
 * a key with an identity. Distinct keys of sources the vault creates get
 * distinct labels (see {@linkcode checkNewSourceKey}); `vault cat --source`
 * and `vault verify --source` match labels exactly.
 *
 * @example Usage
 * ```ts
 * import { sourceLabel } from "./_key.ts";
 * import assert from "node:assert/strict";
 * assert.equal(sourceLabel({ peer: "::1", name: "web" }), "::1/web");
 * assert.equal(
 *   sourceLabel({ peer: "::1", identity: "token:a", name: "web" }),
 *   "::1[token:a]/web",
 * );
 * ```
 *
 * @param key The source key.
 * @returns The label (raw: escape it before it meets a terminal).
 */
export function sourceLabel(key: SourceKey): string {
  const who = key.identity === undefined
    ? key.peer
    : `${key.peer}[${key.identity}]`;
  return `${who}/${key.name}`;
}

/**
 * Whether a source filter picks a source: a filter with a `/` is a label
 * and must equal the source's label; a filter without one is a name and
 * must equal the source's name. So `127.0.0.5/auth` picks only the source
 * `auth` of peer 127.0.0.5, never a source another peer named
 * `127.0.0.5/auth` (which only earlier versions could create).
 *
 * @example Usage
 * ```ts
 * import { matchesSource } from "./_key.ts";
 * import assert from "node:assert/strict";
 * const forged = { peer: "10.0.0.9", name: "127.0.0.5/auth" };
 * assert.equal(matchesSource(forged, "127.0.0.5/auth"), false);
 * assert.equal(matchesSource({ peer: "127.0.0.5", name: "auth" }, "127.0.0.5/auth"), true);
 * assert.equal(matchesSource({ peer: "127.0.0.5", name: "auth" }, "auth"), true);
 * ```
 *
 * @param key The source.
 * @param filter A name or a label.
 * @returns True if the filter picks the source.
 */
export function matchesSource(key: SourceKey, filter: string): boolean {
  return filter.includes("/")
    ? sourceLabel(key) === filter
    : key.name === filter;
}
