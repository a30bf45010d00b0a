/**
 * The whole-file check a `get` ends with: CRC-32 by default, SHA-256 on
 * request.
 *
 * Why CRC-32 by default: the digest travels in-band, so it cannot stop an
 * attacker who can change the data (they change the digest too; TLS is what
 * stops them). What it must catch is truncation, corruption and bugs between
 * the server's file and the client's, and a 32-bit CRC plus the exact byte
 * count does that. It costs nothing (`zlib.crc32` runs at ~45 GiB/s here),
 * while SHA-256 (~1.5 GiB/s per core) on both ends made every verified
 * transfer CPU-bound. rsync made the same choice (xxh128 by default since
 * 3.2). SHA-256 stays available (`moat get --digest sha256`) for a digest to
 * compare with a published one, and is what a Get without the field gets.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { ProtocolError } from "./errors.ts";
import { escapeText } from "./text.ts";
import { zlib } from "./builtins.ts";

/** Names of the digests a Get may ask for. */
export const DIGESTS = ["crc32", "sha256"] as const;

/** One of {@linkcode DIGESTS}. */
export type DigestName = typeof DIGESTS[number];

/** The default of `moat get`. */
export const DEFAULT_DIGEST: DigestName = "crc32";

/** An incremental digest. */
export interface Digest {
  /** Which one. */
  readonly name: DigestName;
  /** Bytes of the finished digest (4 or 32). */
  readonly size: number;
  /** Feeds bytes. */
  update(bytes: Uint8Array): void;
  /** Finishes: lowercase hex, 8 or 64 characters. Call once. */
  hex(): string;
}

/**
 * @param name Any string.
 * @returns Whether it names one of {@linkcode DIGESTS}.
 */
export function isDigestName(name: string): name is DigestName {
  return (DIGESTS as readonly string[]).includes(name);
}

/**
 * Checks a digest name from the wire.
 *
 * @param name What was given.
 * @returns The name, typed.
 * @throws {ProtocolError} When it is not one of {@linkcode DIGESTS}.
 */
export function parseDigestName(name: string): DigestName {
  if (isDigestName(name)) return name;
  // The name comes from the peer and ends up on a terminal.
  throw new ProtocolError(
    `Unknown digest "${escapeText(name, { maxLength: 32 })}" (expected ${
      DIGESTS.join(" or ")
    })`,
  );
}

/**
 * @param name `crc32` or `sha256`.
 * @returns A fresh digest.
 */
export function createDigest(name: DigestName): Digest {
  if (name === "sha256") {
    const hash = createHash("sha256");
    return {
      name,
      size: 32,
      update: (bytes) => void hash.update(bytes),
      hex: () => hash.digest("hex"),
    };
  }
  let crc = 0;
  const { crc32 } = zlib();
  return {
    name,
    size: 4,
    update: (bytes) => void (crc = crc32(bytes, crc)),
    hex: () => crc.toString(16).padStart(8, "0"),
  };
}
