/**
 * What the client commands (get, chat, ship) share: the --server and
 * --timeout rows of their tables, their exit statuses and environment, and
 * turning those values into {@linkcode ClientOptions} fields.
 *
 * @module
 */

import {
  type ClientOptions,
  DEFAULT_CLIENT_TIMEOUT_MS,
  parseServerAddr,
  type ServerAddr,
} from "../lib/client.ts";
import { ExitCode } from "../lib/errors.ts";
import { DEFAULT_PORT } from "../lib/limits.ts";
import { VERSION } from "../lib/version.ts";
import { getNet } from "../lib/net/mod.ts";
import type { ExitSpec, OptionSpec } from "./options.ts";
import { COMMON_EXITS } from "./options.ts";
import { printNote } from "./output.ts";
import { clientSecurity, type ClientSecurityValues } from "./secure_cli.ts";

/** The server a client connects to without --server or $MOAT_SERVER. */
export const DEFAULT_SERVER = `127.0.0.1:${DEFAULT_PORT}`;

/** `--server`, defaulted from $MOAT_SERVER. */
export const SERVER_OPTION = {
  type: "string",
  placeholder: "HOST[:PORT]",
  description:
    `Server to connect to: HOST, HOST:PORT or [IPV6]:PORT; the port defaults to ${DEFAULT_PORT}`,
  env: "MOAT_SERVER",
  default: DEFAULT_SERVER,
} as const satisfies OptionSpec;

/** `--timeout SECS`: whole seconds, at least 1. */
export const TIMEOUT_OPTION = {
  type: "integer",
  placeholder: "SECS",
  min: 1,
  default: DEFAULT_CLIENT_TIMEOUT_MS / 1000,
  description:
    "Give up when the server does not answer for SECS: to connect and finish the handshake",
} as const satisfies OptionSpec;

/** Exit statuses of every client command. */
export const CLIENT_EXITS: readonly ExitSpec[] = [
  ...COMMON_EXITS,
  {
    code: ExitCode.AccessDenied,
    description:
      "the server refused this client (allowlist, token, certificate)",
  },
  {
    code: ExitCode.Connection,
    description: "cannot connect, or the connection was lost or timed out",
  },
];

/**
 * The server to connect to; a bare HOST gets the default port.
 *
 * @param text The --server value (or $MOAT_SERVER, or the default).
 * @returns Host and port.
 * @throws {MoatError} ERR_USAGE if it does not parse.
 */
export function serverAddr(text: string): ServerAddr {
  return parseServerAddr(text, DEFAULT_PORT);
}

/**
 * The fields of {@linkcode ClientOptions} every client command fills in the
 * same way: network, server, version, timeout, TLS and token. A server
 * trusted on first use is announced on stderr.
 *
 * @param values Parsed --server, --timeout and security options.
 * @param env The environment (for $MOAT_TOKEN and the known_hosts folder).
 * @returns Client options.
 * @throws {UsageError} On inconsistent options or unreadable files.
 */
export function clientOptions(
  values: ClientSecurityValues & { server: string; timeout: number },
  env: Record<string, string | undefined>,
): ClientOptions {
  return {
    net: getNet(),
    server: serverAddr(values.server),
    version: VERSION,
    timeoutMs: values.timeout * 1000,
    ...clientSecurity(values, {
      env,
      onNewHost: (host, fp, file) =>
        printNote(
          `trusting ${host} on first use: ${fp} (remembered in "${file}")`,
        ),
    }),
  };
}
