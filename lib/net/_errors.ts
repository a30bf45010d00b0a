/**
 * Error mapping shared by the adapters whose runtimes report node-style
 * `code` strings (Bun's sockets and `node:tls`).
 *
 * @module
 */

import {
  AddressInUseError,
  ConnectionClosedError,
  MoatError,
} from "../errors.ts";
import type { ListenOptions } from "./types.ts";

/** "host:port", or "[v6]:port". */
export function formatAddr(hostname: string, port: number): string {
  return hostname.includes(":")
    ? `[${hostname}]:${port}`
    : `${hostname}:${port}`;
}

/** The `code` string of a node-style error, if any. */
export function errorCode(error: unknown): string | undefined {
  if (typeof error !== "object" || error === null || !("code" in error)) {
    return undefined;
  }
  return typeof error.code === "string" ? error.code : undefined;
}

/** The first line of an error's message, lower-cased at the start. */
export function describe(error: unknown): string {
  const text =
    (error instanceof Error ? error.message : String(error)).split("\n")[0] ??
      "";
  return text.charAt(0).toLowerCase() + text.slice(1);
}

/** Wraps an error on an open connection. */
export function toClosedError(error: Error): ConnectionClosedError {
  const code = errorCode(error);
  if (code === "ECONNRESET") {
    return new ConnectionClosedError("Connection reset by peer", {
      cause: error,
    });
  }
  if (code === "ETIMEDOUT") {
    return new ConnectionClosedError("Connection timed out", { cause: error });
  }
  return new ConnectionClosedError(undefined, { cause: error });
}

/** Wraps a failure to listen. */
export function toListenError(error: unknown, options: ListenOptions): unknown {
  const where = formatAddr(options.hostname, options.port);
  const code = errorCode(error);
  if (code === "EADDRINUSE") {
    return new AddressInUseError(
      `Cannot listen on ${where}: address already in use`,
      { cause: error },
    );
  }
  const reason = code === "EADDRNOTAVAIL"
    ? "address not available"
    : code === "EACCES"
    ? "permission denied"
    : describe(error);
  return new MoatError(
    "ERR_LISTEN",
    `Cannot listen on ${where}: ${reason}`,
    undefined,
    { cause: error },
  );
}

/** The reason a connect failed, for the errno codes that have a plain one. */
export function connectReason(code: string | undefined): string | undefined {
  if (code === "ECONNREFUSED") return "connection refused";
  if (code === "ETIMEDOUT") return "timed out";
  if (code === "ENOTFOUND") return "host not found";
  if (code === "ENETUNREACH" || code === "EHOSTUNREACH") {
    return "network unreachable";
  }
  return undefined;
}
