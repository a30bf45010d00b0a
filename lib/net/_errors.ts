/**
 * Error mapping shared by the adapters. Every runtime error here carries a
 * node-style errno `code` string: Bun's sockets and `node:tls` do, and so do
 * Deno's (`Deno.errors.AddrInUse` has `code: "EADDRINUSE"`), so one mapping
 * serves all three and the messages are the same on every runtime.
 *
 * @module
 */

import {
  AddressInUseError,
  ConnectError,
  ConnectionClosedError,
  ExitCode,
  MoatError,
} from "../errors.ts";
import type { ConnectOptions, ListenOptions } from "./types.ts";

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

/**
 * The first line of an error's message, lower-cased at the start, without
 * Deno's errno suffix: "Address not available (os error 99)" becomes
 * "address not available".
 */
export function describe(error: unknown): string {
  const text =
    (error instanceof Error ? error.message : String(error)).split("\n")[0] ??
      "";
  const bare = text.replace(/ \(os error \d+\)$/, "");
  return bare.charAt(0).toLowerCase() + bare.slice(1);
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

/** Wraps a failure to listen on TCP. */
export function toListenError(error: unknown, options: ListenOptions): unknown {
  const code = errorCode(error);
  return listenError(
    formatAddr(options.hostname, options.port),
    code === "EADDRINUSE"
      ? "address already in use"
      : code === "EADDRNOTAVAIL"
      ? "address not available"
      : code === "EACCES" || code === "EPERM"
      ? "permission denied"
      : describe(error),
    error,
  );
}

/** Wraps a failure to listen on a Unix socket. */
export function toUnixListenError(error: unknown, path: string): unknown {
  const code = errorCode(error);
  return listenError(
    `"${path}"`,
    code === "EADDRINUSE"
      ? "something exists there already"
      : code === "ENOENT"
      ? "no such directory"
      : code === "EACCES" || code === "EPERM"
      ? "permission denied"
      : describe(error),
    error,
  );
}

/** AddressInUseError for EADDRINUSE, else ERR_LISTEN; both name the place. */
function listenError(where: string, reason: string, error: unknown): MoatError {
  const message = `Cannot listen on ${where}: ${reason}`;
  return errorCode(error) === "EADDRINUSE"
    ? new AddressInUseError(message, { cause: error })
    : new MoatError("ERR_LISTEN", message, undefined, { cause: error });
}

/** Wraps a failure to connect over TCP. */
export function toConnectError(
  error: unknown,
  options: ConnectOptions,
): ConnectError {
  const where = formatAddr(options.hostname, options.port);
  // Deno's failed name lookup is a plain Error with no code.
  const lookup = error instanceof Error &&
    error.message.startsWith("failed to lookup");
  const reason = connectReason(errorCode(error)) ??
    (lookup ? "host not found" : describe(error));
  return new ConnectError(`Cannot connect to ${where}: ${reason}`, {
    cause: error,
  });
}

/** Wraps a failure to connect to a Unix socket. */
export function toUnixConnectError(error: unknown, path: string): ConnectError {
  const code = errorCode(error);
  const reason = code === "ENOENT"
    ? "no such socket"
    : code === "ECONNREFUSED"
    ? "connection refused"
    : code === "EACCES" || code === "EPERM"
    ? "permission denied"
    : describe(error);
  return new ConnectError(`Cannot connect to "${path}": ${reason}`, {
    cause: error,
  });
}

/**
 * `ERR_TLS_CONFIG`: a certificate, key or CA that the runtime's TLS refused.
 *
 * @param error What the runtime threw.
 * @param what What could not be used.
 * @returns "Cannot use the TLS certificate or key: …".
 */
export function tlsConfigError(
  error: unknown,
  what = "TLS certificate or key",
): MoatError {
  return new MoatError(
    "ERR_TLS_CONFIG",
    `Cannot use the ${what}: ${describe(error)}`,
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

/**
 * A one-line reason for a failed handshake. The OpenSSL codes that mean
 * "the other side is not speaking TLS" get a plain explanation.
 *
 * @param error The error the runtime reported, if any.
 * @returns e.g. "the peer does not speak TLS".
 */
export function handshakeReason(error: unknown): string {
  const code = errorCode(error) ?? "";
  const text = error instanceof Error ? error.message : String(error ?? "");
  if (
    /WRONG_VERSION_NUMBER|PACKET_LENGTH_TOO_LONG|HTTP_REQUEST|RECORD_LAYER_FAILURE|InvalidContentType/i
      .test(code + " " + text)
  ) {
    return "the peer does not speak TLS";
  }
  if (
    /UNSUPPORTED_PROTOCOL|PROTOCOL_VERSION|VERSION_TOO_LOW|NO_PROTOCOLS_AVAILABLE|SupportedVersionsExtensionRequired/i
      .test(code + " " + text)
  ) {
    return "the peer does not support TLS 1.3";
  }
  if (/CERTIFICATE_REQUIRED/i.test(code + " " + text)) {
    return "a client certificate is required";
  }
  if (code === "ECONNRESET") return "connection reset during the TLS handshake";
  return describe(error);
}

/**
 * True for the codes of a certificate that did not verify (OpenSSL's X509
 * verification results and node's host name check), as opposed to a failed
 * TLS exchange.
 *
 * @param code A node-style error code.
 * @returns Whether it names a certificate problem.
 */
export function isCertificateCode(code: string | undefined): boolean {
  return code !== undefined &&
    (code === "ERR_TLS_CERT_ALTNAME_INVALID" ||
      /^(?:UNABLE_TO_|CERT_|DEPTH_ZERO_SELF_SIGNED|SELF_SIGNED_CERT|HOSTNAME_MISMATCH|IP_ADDRESS_MISMATCH|INVALID_CA|INVALID_PURPOSE|PATH_LENGTH_EXCEEDED)/
        .test(code));
}

/**
 * Wraps a client's failed TLS handshake. A certificate the runtime refused
 * by itself is the same refusal as one `lib/tls.ts` refuses: `ERR_TLS_VERIFY`,
 * exit 3 (access refused), on every runtime. Anything else is a connection
 * failure (exit 6).
 *
 * @param error What the runtime reported.
 * @param options Where the client connected.
 * @returns The error to throw.
 */
export function toTlsConnectError(
  error: unknown,
  options: ConnectOptions,
): MoatError {
  const where = formatAddr(options.hostname, options.port);
  const code = errorCode(error);
  if (isCertificateCode(code)) {
    return new MoatError(
      "ERR_TLS_VERIFY",
      `Server ${where} refused: its certificate did not verify (${code})`,
      ExitCode.AccessDenied,
      { cause: error },
    );
  }
  const reason = error === undefined
    ? "connection closed during the TLS handshake"
    : connectReason(code) ?? `TLS handshake failed: ${handshakeReason(error)}`;
  return new ConnectError(`Cannot connect to ${where}: ${reason}`, {
    cause: error,
  });
}
