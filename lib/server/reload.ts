/**
 * What a configuration reload (SIGHUP) may change in a running server, how
 * to tell what did change, and which open connections the new settings no
 * longer admit.
 *
 * @module
 */

import type { ServerTlsOptions } from "../net/types.ts";
import { type Allowlist, formatCidr } from "../allowlist.ts";
import type { ServerAuth } from "./options.ts";
import type { Session } from "./session.ts";

/**
 * A server's reloadable settings, given whole: `tls` or `auth` left out
 * means none, as in {@linkcode ServerOptions}.
 */
export interface ServerReload {
  /** Who may connect. */
  allowlist: Allowlist;
  /** The certificate, key and client CA, on a TLS server. */
  tls?: ServerTlsOptions | undefined;
  /** Client certificates and tokens, on a server that requires them. */
  auth?: ServerAuth | undefined;
}

/** What a reload did. */
export interface ReloadResult {
  /**
   * What differs from before, in this order: `allowlist`, `certificate`
   * (the server's certificate or key), `client-ca`, `allow-cert`, `tokens`.
   * Empty when the files said what they said before.
   */
  changed: string[];
  /** Open connections closed because the new settings refuse them. */
  closed: number;
}

/**
 * Names what differs between two sets of settings.
 *
 * @example
 * ```ts
 * import { diffReload } from "./reload.ts";
 * import { compileAllowlist } from "../allowlist.ts";
 * import assert from "node:assert/strict";
 * const before = { allowlist: compileAllowlist({ allow: ["10.0.0.5"] }) };
 * const after = { allowlist: compileAllowlist({ allow: ["10.0.0.6"] }) };
 * assert.deepEqual(diffReload(before, after), ["allowlist"]);
 * assert.deepEqual(diffReload(before, before), []);
 * ```
 *
 * @param before The settings in force.
 * @param after The new settings.
 * @returns The names of what changed (see {@linkcode ReloadResult.changed}).
 */
export function diffReload(
  before: ServerReload,
  after: ServerReload,
): string[] {
  const changed: string[] = [];
  if (allowlistKey(before.allowlist) !== allowlistKey(after.allowlist)) {
    changed.push("allowlist");
  }
  if (
    before.tls?.cert !== after.tls?.cert || before.tls?.key !== after.tls?.key
  ) {
    changed.push("certificate");
  }
  if (clientCa(before) !== clientCa(after)) changed.push("client-ca");
  const pins = (r: ServerReload) =>
    [...r.auth?.certs?.allowed ?? []].sort().join(" ");
  if (pins(before) !== pins(after)) changed.push("allow-cert");
  if (tokensKey(before.auth) !== tokensKey(after.auth)) changed.push("tokens");
  return changed;
}

/**
 * Refuses a reload that would turn TLS, client certificates or tokens on
 * or off: plain-text mode and what each handshake asks for depend on them,
 * and connections already open were admitted under the old rules.
 *
 * @param before The settings in force.
 * @param after The new settings.
 * @throws {TypeError} Naming what would be turned on or off.
 */
export function checkReload(before: ServerReload, after: ServerReload): void {
  const kinds: [string, (r: ServerReload) => boolean][] = [
    ["TLS", (r) => r.tls !== undefined],
    ["client certificates", (r) => r.auth?.certs !== undefined],
    ["tokens", (r) => r.auth?.tokens !== undefined],
  ];
  for (const [what, has] of kinds) {
    if (has(before) !== has(after)) {
      throw new TypeError(
        `Cannot reload: it would turn ${what} ${
          has(after) ? "on" : "off"
        }; restart moat for that`,
      );
    }
  }
}

/** A reload as {@linkcode revokedBy} weighs it. */
export interface ReloadChange {
  /** The settings in force until now. */
  before: ServerReload;
  /** The new settings. */
  after: ServerReload;
  /** What changed (from {@linkcode diffReload}). */
  changed: readonly string[];
}

/**
 * Why an open connection must end under new settings, if it must: its
 * address is no longer allowed, the token it proved is gone or has a new
 * secret, or it proved a certificate while the certificate rules changed (a
 * handshake cannot be checked again in place; the client reconnects and is
 * checked under the new rules).
 *
 * @param s The open connection.
 * @param change The settings before and after, and what changed.
 * @returns The reason for its `closed` line, or undefined to keep it.
 */
export function revokedBy(
  s: Session,
  change: ReloadChange,
): string | undefined {
  const { before, after, changed } = change;
  if (!after.allowlist.check(s.conn.remoteAddr.hostname)) {
    return "access revoked by reload";
  }
  const proofs = s.identity?.split(" ") ?? [];
  if (changed.includes("tokens")) {
    for (const proof of proofs) {
      if (!proof.startsWith("token:")) continue;
      const name = proof.slice("token:".length);
      const secret = (r: ServerReload) =>
        r.auth?.tokens?.find((t) => t.name === name)?.secret;
      const now = secret(after);
      if (now === undefined || now !== secret(before)) {
        return "token revoked by reload";
      }
    }
  }
  const certRules = changed.includes("client-ca") ||
    changed.includes("allow-cert");
  if (certRules && proofs.some((p) => p.startsWith("cert:"))) {
    return "client certificate rules changed by reload";
  }
  return undefined;
}

/** A text that differs exactly when the allowlist's rules do. */
function allowlistKey(allowlist: Allowlist): string {
  return `${allowlist.allow.map(formatCidr).join(" ")} | ${
    allowlist.deny.map(formatCidr).join(" ")
  }`;
}

function clientCa(r: ServerReload): string | undefined {
  return r.tls?.clientCa ?? r.auth?.certs?.clientCa;
}

/** A text that differs exactly when a name or secret does (never logged). */
function tokensKey(auth: ServerAuth | undefined): string {
  return JSON.stringify(
    (auth?.tokens ?? []).map((t) => [t.name, t.secret]).sort(),
  );
}
