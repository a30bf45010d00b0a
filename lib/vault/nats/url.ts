/**
 * `nats://host1:4222,host2:4222,…` vault addresses, without the NATS client:
 * the command line checks and names them without loading it.
 *
 * @module
 */

/** The scheme of a JetStream vault address. */
export const NATS_SCHEME = "nats://";

/**
 * Whether a `--vault` value names a JetStream vault rather than a directory.
 *
 * @param text The value.
 * @returns True for `nats://…`.
 */
export function isNatsUrl(text: string): boolean {
  return text.startsWith(NATS_SCHEME);
}

const HOST_PORT = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::([0-9]{1,5}))?$/;

/**
 * Splits a vault address into the servers the client tries, each
 * `host:port` (port 4222 when absent; IPv6 as `[addr]:port`).
 *
 * @example Usage
 * ```ts
 * import { parseNatsUrl } from "./url.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(parseNatsUrl("nats://a:4223,[::1],b"), ["a:4223", "[::1]:4222", "b:4222"]);
 * ```
 *
 * @param text `nats://host[:port][,host[:port]…]`.
 * @returns The servers.
 * @throws {RangeError} For another scheme, an empty list, credentials or a
 * path in the address, or a bad host or port.
 */
export function parseNatsUrl(text: string): string[] {
  if (!isNatsUrl(text)) {
    throw new RangeError(
      `Invalid NATS address "${text}": it must start with nats://`,
    );
  }
  const rest = text.slice(NATS_SCHEME.length).replace(/\/$/, "");
  if (rest === "") {
    throw new RangeError(`Invalid NATS address "${text}": no server`);
  }
  const servers: string[] = [];
  for (const part of rest.split(",")) {
    const m = HOST_PORT.exec(part);
    const port = m?.[1] === undefined ? 4222 : Number(m[1]);
    if (!m || port < 1 || port > 65535) {
      throw new RangeError(
        `Invalid NATS address "${text}": "${part}" is not host:port (credentials go in --nats-creds)`,
      );
    }
    servers.push(m[1] === undefined ? `${part}:4222` : part);
  }
  return servers;
}

const STREAM_NAME = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * Checks a stream name: letters, digits, `_` and `-`, 1 to 64 of them (NATS
 * forbids `.`, `*`, `>` and white space; the name is also a subject token).
 *
 * @param name The name.
 * @throws {RangeError} For a name outside that set.
 */
export function checkStreamName(name: string): void {
  if (!STREAM_NAME.test(name)) {
    throw new RangeError(
      `Invalid stream name "${name}": use 1 to 64 letters, digits, "_" or "-"`,
    );
  }
}
