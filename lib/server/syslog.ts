/**
 * The syslog port of `moat serve --syslog-port`: takes RFC 6587 syslog over
 * TCP (octet counting or newline framing, detected per connection) from an
 * allowlisted peer and appends each message to the vault.
 *
 * Every message of one peer goes to one source, `{ peer, name: "syslog" }`,
 * with sequence numbers the server assigns (the source's last + 1, …), so
 * several connections from one host interleave safely. A record's `ts` is
 * the message's own timestamp when it parses, else the receive time; the
 * stored line is the message as sent, less its framing and one trailing
 * newline.
 *
 * The `Server` accepts the connection, applies the allowlist and
 * the connection limit, and writes the `accepted`/`refused`/`closed` audit
 * lines; this module reads, frames, stores, and reports.
 *
 * @module
 */

import type { Conn } from "../net/types.ts";
import type { AuditLog } from "../audit.ts";
import type { AppendRecord, Vault, VaultSource } from "../vault/store.ts";
import {
  DEFAULT_SYSLOG_MAX,
  parseSyslogTime,
  SYSLOG_SOURCE,
  SyslogFramer,
} from "../syslog.ts";

export { SYSLOG_SOURCE };
import { ConnectionClosedError } from "../errors.ts";
import { AppendPipeline } from "./append_pipeline.ts";
import { errorCode, errorMessage } from "./session.ts";
import { DEFAULT_MAX_BATCH_RECORDS } from "../limits.ts";

/** First read buffer: small, because idle connections must stay cheap. */
const FIRST_READ = 4096;
/** Read buffer once a read filled the small one: a busy sender. */
const BUSY_READ = 256 * 1024;

/** One accepted syslog connection, as the server hands it over. */
export interface SyslogConnection {
  /** The socket. */
  readonly conn: Conn;
  /** The peer as the audit log shows it, "host:port". */
  readonly peer: string;
  /** The server's name for the connection, e.g. "c7". */
  readonly name: string;
  /** Reads from the socket and records the activity (for the idle timeout). */
  read(buf: Uint8Array): Promise<number | null>;
}

/** Options for {@linkcode serveSyslog}. */
export interface ServeSyslogOptions {
  /** The vault the messages go to. */
  vault: Vault;
  /** Where refusals, errors and the per-connection summary are logged. */
  audit: AuditLog;
  /** The peer part of the source key: the peer's address as the server identifies it. */
  peerKey: string;
  /** Longest message accepted, in bytes. @default {65536} */
  maxMessage?: number;
}

/**
 * Serves one syslog connection until the peer closes, it breaks the framing,
 * it sends an oversize message (refused with an audit line), or the vault
 * fails. Each read's messages are one vault append; appends are pipelined,
 * at most 8 at once, and all are durable (or failed) when this resolves.
 *
 * @example
 * ```ts ignore
 * const reason = await serveSyslog(
 *   { conn, peer: "10.0.0.5:51234", name: "c1", read: (b) => conn.read(b) },
 *   { vault, audit, peerKey: "10.0.0.5" },
 * );
 * ```
 *
 * @param c The connection.
 * @param options Vault, audit log, source peer and size limit.
 * @returns Why the connection ended, for the `closed` audit line. Never
 * rejects.
 */
export async function serveSyslog(
  c: SyslogConnection,
  options: ServeSyslogOptions,
): Promise<string> {
  const { vault, audit } = options;
  const framer = new SyslogFramer({
    maxMessage: options.maxMessage ?? DEFAULT_SYSLOG_MAX,
  });
  const key = { peer: options.peerKey, name: SYSLOG_SOURCE };
  const where = { peer: c.peer, name: c.name, listener: "syslog" };
  const messages: Uint8Array[] = [];
  let reason = "peer closed";
  let buf = new Uint8Array(FIRST_READ);
  let source: VaultSource;
  try {
    source = vault.source(key);
  } catch (err) {
    audit.write("error", {
      ...where,
      code: errorCode(err),
      message: errorMessage(err),
      during: "syslog",
    });
    return `vault refused the source: ${errorMessage(err)}`;
  }
  const appends = new AppendPipeline(source);

  // Appends the messages of one read, in batches the vault accepts; they
  // must be used before the buffer is.
  const store = async () => {
    const recvTs = Date.now();
    for (let at = 0; at < messages.length; at += DEFAULT_MAX_BATCH_RECORDS) {
      const slice = messages.slice(at, at + DEFAULT_MAX_BATCH_RECORDS);
      // acceptedSeq moves as soon as append is called, so each slice
      // numbers on from the one before.
      const first = source.acceptedSeq + 1;
      const records: AppendRecord[] = new Array(slice.length);
      for (let i = 0; i < slice.length; i++) {
        const line = slice[i]!;
        records[i] = {
          seq: first + i,
          ts: parseSyslogTime(line, { now: recvTs }) ?? recvTs,
          line,
        };
      }
      // The vault copies the lines before append returns.
      await appends.push(records, { recvTs });
    }
    messages.length = 0;
  };

  try {
    for (;;) {
      const n = await c.read(buf);
      let framing: unknown;
      try {
        if (n === null) framer.end(messages);
        else framer.push(buf.subarray(0, n), messages);
      } catch (err) {
        framing = err;
      }
      // Messages before a framing error are kept.
      if (messages.length > 0) await store();
      if (framing !== undefined) throw framing;
      if (n === null) break;
      if (n === buf.length && buf.length < BUSY_READ) {
        buf = new Uint8Array(BUSY_READ);
      }
      if (appends.failed) throw appends.failure;
    }
    await appends.finish();
  } catch (err) {
    await appends.settle();
    const code = errorCode(err);
    if (code === "ERR_SYSLOG_TOO_LARGE") {
      audit.write("refused", { ...where, reason: errorMessage(err) });
      reason = "syslog message too large";
    } else if (err instanceof ConnectionClosedError) {
      reason = errorMessage(err);
    } else {
      audit.write("error", {
        ...where,
        code,
        message: errorMessage(err),
        during: "syslog",
      });
      reason = `syslog ended: ${errorMessage(err)}`;
    }
  }
  audit.write("syslog_finished", {
    ...where,
    source: SYSLOG_SOURCE,
    framing: framer.framing ?? "none",
    records: appends.stored,
    lastSeq: source.lastSeq,
  });
  return reason;
}
