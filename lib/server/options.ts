/**
 * The options of a {@linkcode Server} and their defaults.
 *
 * @module
 */

import type { Net, ServerTlsOptions } from "../net/types.ts";
import type { ClientCertPolicy } from "../tls.ts";
import type { Token } from "../auth.ts";
import type { Allowlist } from "../allowlist.ts";
import type { Jail } from "../jail.ts";
import type { AuditLog } from "../audit.ts";
import type { Vault } from "../vault/store.ts";
import type { Witness } from "../witness/witness.ts";
import type { ChatLine } from "../protocol.ts";
import { DEFAULT_MAX_FRAME_SIZE } from "../framer.ts";
import {
  DEFAULT_CHAT_RATE,
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  DEFAULT_IDLE_TIMEOUT_MS,
  DEFAULT_MAX_CONNS,
  DEFAULT_MAX_CONNS_PER_PEER,
  DEFAULT_MAX_LINE,
  DEFAULT_PORT,
  DEFAULT_SEND_BUFFER_BYTES,
  DEFAULT_SILENT_AFTER_MS,
} from "../limits.ts";

/** Options for {@linkcode Server}. */
export interface ServerOptions {
  /** The runtime's sockets (`lib/net/mod.ts`). */
  net: Net;
  /** Addresses to listen on, e.g. ["127.0.0.1", "::1"]. */
  hosts: readonly string[];
  /** Port; 0 picks a free one. @default {4320} */
  port?: number;
  /** Who may connect; everyone else is refused before a byte is read. */
  allowlist: Allowlist;
  /** The root files are served from; required unless `witness` is given. */
  jail?: Jail;
  /** Where every event is logged. */
  audit: AuditLog;
  /** Reported in the Welcome frame. */
  version: string;
  /** Most connections at once; more are refused with "busy". @default {512} */
  maxConns?: number;
  /**
   * Most connections at once from one peer address, on each port; more
   * are refused with "busy". @default {64}
   */
  maxConnsPerPeer?: number;
  /** Close a connection idle this long. @default {300_000} */
  idleTimeoutMs?: number;
  /** A framed client must finish its handshake this soon. @default {10_000} */
  handshakeTimeoutMs?: number;
  /** Largest frame payload accepted. @default {1_048_576} */
  maxFrameSize?: number;
  /** Longest chat line, in bytes. @default {8192} */
  maxLine?: number;
  /**
   * Most bytes all file transfers together hold in send buffers; each takes
   * its chunks from it, smaller ones when it is tight. @default {67_108_864}
   */
  sendBufferBytes?: number;
  /**
   * Chat lines per second from one peer address, with a burst of two
   * seconds' worth; the room as a whole takes 20 times this. Past it the
   * server stops reading the peer until the rate allows: no line is
   * dropped. 0 is unlimited. @default {50}
   */
  chatRate?: number;
  /**
   * Serve plain-text clients (chat lines, `FILE:`), inside TLS too; off
   * whatever this says when tokens are required. @default {true}
   */
  plain?: boolean;
  /** Answer every chat line with this text. */
  reply?: string;
  /**
   * Put before every connection name (`k3f9-` makes `k3f9-c7`), so that
   * names stay unique across restarts; `moat serve` picks one at random at
   * each start. @default {""}
   */
  namePrefix?: string;
  /** Shows each client chat line to the operator. */
  onChat?: (line: ChatLine) => void;
  /** Speak TLS 1.3 only; plain text then runs inside TLS. */
  tls?: ServerTlsOptions;
  /**
   * Client authentication: a client certificate is checked before the first
   * byte (plain text stays on); tokens turn plain-text mode off.
   */
  auth?: ServerAuth;
  /** Accept shipped log records into this vault. */
  vault?: Vault;
  /**
   * Be a witness (`moat witness`): serve witness requests only, with this
   * state; no files, chat, ship or plain text. Excludes `jail`, `vault`
   * and `syslog`.
   */
  witness?: Witness;
  /** Also accept syslog over TCP into the vault (needs `vault`; see `lib/server/syslog.ts`). */
  syslog?: ServerSyslog;
  /**
   * Audit `source_silent` when a vault source that shipped goes this long
   * without a record or a heartbeat (see `liveness.ts`). @default {300_000}
   */
  silentAfterMs?: number;
  /**
   * The clock of every deadline: idle time, the handshake timeout, the
   * linger of a refusal or of an ending plain connection. Tests pass a fake
   * one and call {@linkcode Server.prototype.sweep}. @default {Date.now}
   */
  now?: () => number;
}

/**
 * The syslog listener of a {@linkcode Server}: TCP on the same hosts, plain
 * or (RFC 5425) TLS, with limits of its own (see `lib/server/syslog.ts` for
 * the defaults and why).
 */
export interface ServerSyslog {
  /** Port; 0 picks a free one. */
  port: number;
  /**
   * Speak TLS 1.3 with the server's `tls` certificate (needs `tls`); client
   * certificates are then required as on the main port when `auth.certs` is
   * set. @default {false}
   */
  tls?: boolean;
  /** Longest message accepted, in bytes; a longer one closes its connection. @default {65536} */
  maxMessage?: number;
  /** Most syslog connections at once, apart from the main port's `maxConns`. @default {256} */
  maxConns?: number;
  /** Close a connection that sent no whole message this long after it was accepted. @default {60_000} */
  idleTimeoutMs?: number;
  /** Close a connection that sent messages, then none for this long. @default {3_600_000} */
  quietTimeoutMs?: number;
  /** Bytes of records on their way into the vault, all connections together, before reading stops. @default {4_194_304} */
  maxBytesInFlight?: number;
}

/** How clients prove who they are (see `lib/tls.ts` and `lib/auth.ts`). */
export interface ServerAuth {
  /** Require a client certificate that this policy accepts (TLS only). */
  certs?: ClientCertPolicy;
  /** Require a token (challenge–response inside the handshake). */
  tokens?: readonly Token[];
  /** The server certificate's fingerprint the token proof binds to; "" on plain TCP. */
  binding?: string;
}

/** {@linkcode ServerOptions} with every default filled in. */
export type ResolvedServerOptions =
  & Required<
    Omit<
      ServerOptions,
      | "reply"
      | "onChat"
      | "tls"
      | "auth"
      | "vault"
      | "syslog"
      | "jail"
      | "witness"
    >
  >
  & ServerOptions;

/**
 * Fills in the defaults of `options` (from `lib/limits.ts`) and the rules
 * between them: tokens turn plain-text mode off.
 *
 * @param options What the caller gave.
 * @returns A new object with every default present.
 * @throws {TypeError} When `syslog` is given without a `vault`, or with
 * `tls` without the server's `tls`, for a negative `chatRate`, without a
 * `jail`, or with a `witness` and a `jail` or `vault`.
 */
export function resolveServerOptions(
  options: ServerOptions,
): ResolvedServerOptions {
  const o: ResolvedServerOptions = {
    port: DEFAULT_PORT,
    maxConns: DEFAULT_MAX_CONNS,
    maxConnsPerPeer: DEFAULT_MAX_CONNS_PER_PEER,
    idleTimeoutMs: DEFAULT_IDLE_TIMEOUT_MS,
    handshakeTimeoutMs: DEFAULT_HANDSHAKE_TIMEOUT_MS,
    maxFrameSize: DEFAULT_MAX_FRAME_SIZE,
    maxLine: DEFAULT_MAX_LINE,
    sendBufferBytes: DEFAULT_SEND_BUFFER_BYTES,
    chatRate: DEFAULT_CHAT_RATE,
    plain: true,
    silentAfterMs: DEFAULT_SILENT_AFTER_MS,
    namePrefix: "",
    now: Date.now,
    ...options,
  };
  // A plain client cannot answer a token challenge, so a token port serves
  // framed clients only. TLS, the allowlist and a client certificate are
  // all checked before the first byte is read (lib/server/listener.ts), so
  // plain text behind them is guarded exactly as framed clients are.
  if (o.auth?.tokens !== undefined) o.plain = false;
  if (o.witness !== undefined) {
    if (o.jail !== undefined || o.vault !== undefined) {
      throw new TypeError(
        "Invalid server options: a witness serves no files and keeps no vault",
      );
    }
    o.plain = false;
  } else if (o.jail === undefined) {
    throw new TypeError("Invalid server options: jail is required");
  }
  if (o.syslog !== undefined && o.vault === undefined) {
    throw new TypeError("Invalid server options: syslog needs a vault");
  }
  if (o.syslog?.tls && o.tls === undefined) {
    throw new TypeError(
      "Invalid server options: syslog.tls needs tls (a certificate and key)",
    );
  }
  if (!(Number.isFinite(o.chatRate) && o.chatRate >= 0)) {
    throw new TypeError(
      `Invalid server options: chatRate must be 0 (unlimited) or more, got ${o.chatRate}`,
    );
  }
  return o;
}
