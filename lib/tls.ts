/**
 * TLS policy, the same on both runtimes: how a client decides to trust a
 * server (a CA, a pinned fingerprint, or trust on first use) and how a server
 * decides to accept a client certificate (a client CA and/or allowed
 * fingerprints). The socket adapters in `lib/net/` only report what the
 * handshake showed; every decision and every refusal message is made here.
 *
 * @module
 */

import * as fs from "node:fs";
import { createPrivateKey, type KeyObject } from "node:crypto";
import type {
  ClientTlsOptions,
  Conn,
  Net,
  ServerTlsOptions,
  TlsInfo,
} from "./net/types.ts";
import {
  certificateMatchesHost,
  endEntityProblem,
  fingerprint,
  readPemCertificates,
} from "./cert.ts";
import { addKnownHost, findKnownHost } from "./known_hosts.ts";
import { ExitCode, MoatError, UsageError } from "./errors.ts";

/** How a client trusts the server's certificate. */
export type ServerTrust =
  /** Verify the chain against a CA bundle and the host name against the SANs. */
  | { kind: "ca"; ca: string }
  /** Accept exactly these fingerprints (`sha256:<hex>`). */
  | { kind: "pin"; pins: readonly string[] }
  /** Remember the first fingerprint seen in `file`; refuse any other later. */
  | { kind: "tofu"; file: string };

/** A client's TLS settings. */
export interface ClientTlsConfig {
  trust: ServerTrust;
  /** PEM client certificate, sent when the server asks. */
  cert?: string;
  /** PEM key of `cert`. */
  key?: string;
  /** Told when trust on first use stored a new server. */
  onNewHost?: (host: string, fingerprint: string, file: string) => void;
}

/** A server's rule for client certificates. */
export interface ClientCertPolicy {
  /** PEM CA bundle; a client chain that verifies against it is accepted. */
  clientCa?: string;
  /** Fingerprints (`sha256:<hex>`) accepted whoever issued them. */
  allowed: ReadonlySet<string>;
}

/** A refused client certificate, as {@linkcode checkClientCertificate} reports it. */
export interface CertRefusal {
  /** Text refusal code, e.g. `CERT_REQUIRED`. */
  code: string;
  /** One line for the client and the audit log. */
  reason: string;
}

/** The error a client throws when the server's certificate is not trusted. */
function untrusted(message: string): MoatError {
  return new MoatError("ERR_TLS_VERIFY", message, ExitCode.AccessDenied);
}

/**
 * Formats `HOST:PORT` as known_hosts and messages use it.
 *
 * @param server The address.
 * @returns `host:port`, or `[v6]:port`.
 */
export function hostKey(server: { hostname: string; port: number }): string {
  return server.hostname.includes(":")
    ? `[${server.hostname}]:${server.port}`
    : `${server.hostname}:${server.port}`;
}

/**
 * Connects to a server, over TLS when `config` is given, and verifies it
 * before anything is sent. Without `config` this is a plain TCP connect.
 *
 * @param net The socket adapter.
 * @param server Where to connect.
 * @param config TLS settings; undefined for plain TCP.
 * @returns The verified connection.
 * @throws {ConnectError} When the server cannot be reached or the handshake fails.
 * @throws {MoatError} `ERR_TLS_VERIFY` (exit 3) when the server's certificate is not trusted.
 */
export async function connectSecure(
  net: Net,
  server: { hostname: string; port: number },
  config?: ClientTlsConfig,
): Promise<Conn> {
  if (config === undefined) return await net.connect(server);
  const tls: ClientTlsOptions = {
    ...(config.trust.kind === "ca" && { ca: config.trust.ca }),
    ...(config.cert !== undefined && { cert: config.cert }),
    ...(config.key !== undefined && { key: config.key }),
  };
  const conn = await net.connect({
    hostname: server.hostname,
    port: server.port,
    tls,
  });
  try {
    verifyServer(conn.tls, server, config);
  } catch (err) {
    conn.close();
    throw err;
  }
  return conn;
}

/**
 * Decides whether the server's certificate is trusted.
 *
 * @param info What the handshake showed.
 * @param server The address dialled (its host is checked in CA mode).
 * @param config The trust mode.
 * @param now The time to check validity against.
 * @returns The server certificate's fingerprint.
 * @throws {MoatError} `ERR_TLS_VERIFY` with a one-line reason.
 */
export function verifyServer(
  info: TlsInfo | undefined,
  server: { hostname: string; port: number },
  config: ClientTlsConfig,
  now: Date = new Date(),
): string {
  const where = hostKey(server);
  const der = info?.peerCertificate;
  if (der === undefined) {
    throw untrusted(`Server ${where} sent no TLS certificate`);
  }
  const fp = fingerprint(der);
  const problem = endEntityProblem(der, now);
  if (problem !== undefined) {
    throw untrusted(`Server ${where} refused: its ${problem}`);
  }
  const trust = config.trust;
  if (trust.kind === "ca") {
    if (!info!.authorized) {
      throw untrusted(
        `Server ${where} refused: its certificate does not verify against --ca (${
          info!.authorizationError ?? "unknown reason"
        })`,
      );
    }
    if (!certificateMatchesHost(der, server.hostname)) {
      throw untrusted(
        `Server ${where} refused: its certificate is not valid for "${server.hostname}"`,
      );
    }
    return fp;
  }
  if (trust.kind === "pin") {
    if (!trust.pins.includes(fp)) {
      throw untrusted(
        `Server ${where} refused: certificate fingerprint ${fp} does not match --pin`,
      );
    }
    return fp;
  }
  const known = findKnownHost(trust.file, where);
  if (known === undefined) {
    addKnownHost(trust.file, where, fp);
    config.onNewHost?.(where, fp, trust.file);
    return fp;
  }
  if (known.fingerprint !== fp) {
    throw untrusted(
      `Server certificate for ${where} has CHANGED (now ${fp}, known ${known.fingerprint}): ` +
        `someone may be intercepting the connection; if the change is expected, remove line ${known.line} ` +
        `of "${trust.file}"`,
    );
  }
  return fp;
}

/**
 * Decides whether a client's certificate is accepted: it must be present,
 * within its dates, not a CA, and either chain to the client CA or have an
 * allowed fingerprint.
 *
 * @param info What the handshake showed.
 * @param policy The server's rule.
 * @param now The time to check validity against.
 * @returns The identity (`cert:sha256:<hex>`), or a refusal.
 */
export function checkClientCertificate(
  info: TlsInfo | undefined,
  policy: ClientCertPolicy,
  now: Date = new Date(),
): { identity: string } | CertRefusal {
  const der = info?.peerCertificate;
  if (der === undefined) {
    return { code: "CERT_REQUIRED", reason: "client certificate required" };
  }
  const fp = fingerprint(der);
  const problem = endEntityProblem(der, now);
  if (problem !== undefined) {
    return { code: "CERT_REJECTED", reason: `client ${problem}` };
  }
  if (policy.allowed.has(fp)) return { identity: `cert:${fp}` };
  if (policy.clientCa !== undefined && info!.authorized) {
    return { identity: `cert:${fp}` };
  }
  return { code: "CERT_REJECTED", reason: "client certificate not trusted" };
}

/** Reads a file for a command-line option, as text. */
function readOption(file: string, option: string): string {
  try {
    return fs.readFileSync(file, "utf8");
  } catch (err) {
    throw new UsageError(
      `Cannot read ${option} "${file}": ${
        (err as NodeJS.ErrnoException).code ?? err
      }`,
    );
  }
}

/**
 * Loads `--tls-cert` and `--tls-key` (and `--client-ca`) for a server, and
 * checks the certificate now rather than at the first client.
 *
 * @param files The file names.
 * @returns The adapter's options and the server certificate's fingerprint
 * (the token handshake binds to it).
 * @throws {UsageError} When a file is missing, does not parse, or the
 * certificate is a CA certificate or outside its dates.
 */
export function loadServerTls(
  files: { cert: string; key: string; clientCa?: string | undefined },
): {
  tls: ServerTlsOptions;
  fingerprint: string;
} {
  const cert = readOption(files.cert, "--tls-cert");
  const key = readOption(files.key, "--tls-key");
  const leaf = readPemCertificates(cert, `--tls-cert "${files.cert}"`)[0]!;
  const der = new Uint8Array(leaf.raw);
  const problem = endEntityProblem(der);
  if (problem !== undefined) {
    throw new UsageError(`Cannot use --tls-cert "${files.cert}": ${problem}`);
  }
  if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(key)) {
    throw new UsageError(
      `Cannot use --tls-key "${files.key}": no PEM private key in it`,
    );
  }
  if (!leaf.checkPrivateKey(createKey(key, files.key))) {
    throw new UsageError(
      `Cannot use --tls-key "${files.key}": it is not the key of --tls-cert "${files.cert}"`,
    );
  }
  const tls: ServerTlsOptions = { cert, key };
  if (files.clientCa !== undefined) {
    const ca = readOption(files.clientCa, "--client-ca");
    readPemCertificates(ca, `--client-ca "${files.clientCa}"`);
    tls.clientCa = ca;
  }
  return { tls, fingerprint: fingerprint(der) };
}

function createKey(pem: string, file: string): KeyObject {
  try {
    return createPrivateKey(pem);
  } catch (err) {
    throw new UsageError(
      `Cannot use --tls-key "${file}": ${
        (err as Error).message.split("\n")[0]
      }`,
    );
  }
}

/**
 * Loads a client's `--cert`/`--key` and `--ca`.
 *
 * @param files The file names (all optional).
 * @returns PEM texts for {@linkcode ClientTlsConfig}.
 * @throws {UsageError} When only one of `--cert` and `--key` is given, or a file is unreadable.
 */
export function loadClientFiles(
  files: {
    ca?: string | undefined;
    cert?: string | undefined;
    key?: string | undefined;
  },
): {
  ca?: string;
  cert?: string;
  key?: string;
} {
  if ((files.cert === undefined) !== (files.key === undefined)) {
    throw new UsageError("--cert and --key go together");
  }
  const out: { ca?: string; cert?: string; key?: string } = {};
  if (files.ca !== undefined) {
    out.ca = readOption(files.ca, "--ca");
    readPemCertificates(out.ca, `--ca "${files.ca}"`);
  }
  if (files.cert !== undefined && files.key !== undefined) {
    out.cert = readOption(files.cert, "--cert");
    readPemCertificates(out.cert, `--cert "${files.cert}"`);
    out.key = readOption(files.key, "--key");
  }
  return out;
}
