/**
 * The NATS connection of a JetStream vault: servers, credentials and TLS,
 * reconnecting forever (a front door whose cluster is down refuses to ack,
 * and resumes once it is back).
 *
 * @module
 */

import { readFile } from "node:fs/promises";
import { connect, credsAuthenticator } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/transport-node";
import { MoatError } from "../../errors.ts";
import { parseNatsUrl } from "./url.ts";

export type { NatsConnection } from "@nats-io/transport-node";

/** Where and how to connect. */
export interface NatsConnectOptions {
  /** `nats://host:port,…`. */
  url: string;
  /**
   * A credentials file: a NATS `.creds` file (user JWT and nkey seed), or
   * one line `user:password` for a server with plain users (docs/DEPLOY.md).
   */
  creds?: string | undefined;
  /** CA certificate file (PEM) the servers' certificates must chain to; implies TLS. */
  tlsCa?: string | undefined;
  /** Client certificate file (PEM), with `tlsKey`. */
  tlsCert?: string | undefined;
  /** Client key file (PEM). */
  tlsKey?: string | undefined;
  /** The connection's name, as the servers show it. @default {"moat"} */
  name?: string;
  /** Milliseconds to wait for the first connection. @default {10000} */
  timeoutMs?: number;
}

/**
 * Connects to the cluster (one of its servers).
 *
 * @param options Servers, credentials, TLS.
 * @returns The connection; it reconnects on its own until closed.
 * @throws {MoatError} `ERR_CONNECT` if no server answers or the
 * credentials are refused; the file's error if a file cannot be read.
 */
export async function connectNats(
  options: NatsConnectOptions,
): Promise<NatsConnection> {
  const servers = parseNatsUrl(options.url);
  const auth = options.creds === undefined
    ? {}
    : _credentials(new Uint8Array(await readFile(options.creds)));
  const tls = options.tlsCa ?? options.tlsCert ?? options.tlsKey;
  try {
    return await connect({
      servers,
      name: options.name ?? "moat",
      timeout: options.timeoutMs ?? 10_000,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      // Every publish waits for its ack anyway; nothing queues while down.
      ...auth,
      ...(tls !== undefined && {
        tls: {
          ...(options.tlsCa !== undefined && { caFile: options.tlsCa }),
          ...(options.tlsCert !== undefined && { certFile: options.tlsCert }),
          ...(options.tlsKey !== undefined && { keyFile: options.tlsKey }),
        },
      }),
    });
  } catch (error) {
    throw new MoatError(
      "ERR_CONNECT",
      `Cannot connect to NATS ${servers.join(",")}: ${
        (error as Error).message
      }`,
      undefined,
      { cause: error },
    );
  }
}

/** Connection options for the contents of a credentials file. */
function _credentials(
  bytes: Uint8Array,
): { authenticator: ReturnType<typeof credsAuthenticator> } | {
  user: string;
  pass: string;
} {
  const text = new TextDecoder().decode(bytes);
  if (text.includes("-----BEGIN NATS USER JWT-----")) {
    return { authenticator: credsAuthenticator(bytes) };
  }
  const line = text.split("\n")[0]!.replace(/\r$/, "");
  const colon = line.indexOf(":");
  if (colon < 1) {
    throw new MoatError(
      "ERR_USAGE",
      "Invalid NATS credentials file: neither a .creds file nor one line user:password",
    );
  }
  return { user: line.slice(0, colon), pass: line.slice(colon + 1) };
}
