/**
 * Knowing who is still there: framed clients' heartbeats (a Ping answered
 * with a Pong, and counted as activity, so a quiet shipper or chat listener
 * is never dropped as idle), and vault sources that stop shipping
 * (`source_silent`, then `source_back`), so that a killed shipper shows in
 * the audit log within minutes.
 *
 * @module
 */

import type { AuditLog } from "../audit.ts";
import { DEFAULT_SILENT_AFTER_MS } from "../limits.ts";

export { DEFAULT_SILENT_AFTER_MS };
import { ProtocolError } from "../errors.ts";
import {
  encodeFrame,
  type Frame,
  FrameReader,
  type FrameReaderOptions,
} from "../framer.ts";
import { Kind } from "../protocol.ts";
import type { SourceKey, VaultSource } from "../vault/store.ts";

/**
 * What liveness needs of a session (its reads, its socket for the Pong, its
 * last activity): a structural type, so that session.ts, which holds the
 * server's SourceWatch, and this module do not import each other.
 */
export interface Session {
  read(buf: Uint8Array): Promise<number | null>;
  readonly conn: { write(bytes: Uint8Array): Promise<void> };
  readonly lastActive: number;
}

const PONG: Uint8Array = encodeFrame({
  type: Kind.Pong,
  payload: new Uint8Array(0),
});

/**
 * A session's frame reader that answers heartbeats itself: a Ping read by
 * {@linkcode HeartbeatReader.prototype.readFrame} is answered with a Pong
 * and never reaches the mode's handler. Reading the Ping is what keeps the
 * session active ({@linkcode Session.read} records it). The handshake reads
 * headers itself, so a Ping before the Welcome is refused as before.
 */
export class HeartbeatReader extends FrameReader {
  #session: Session;

  /**
   * Makes a reader of the session's input.
   *
   * @param session The session; its `read` feeds the reader.
   * @param options Frame limit, buffer size, bytes already read.
   */
  constructor(session: Session, options: FrameReaderOptions) {
    super({ read: (buf) => session.read(buf) }, options);
    this.#session = session;
  }

  /**
   * Reads the next frame that is not a Ping, answering every Ping before it.
   * The Pong's write waits its turn behind the session's other writes, and a
   * peer that does not read its Pongs stops being read (backpressure).
   *
   * @returns The frame, or null if input ended cleanly between frames.
   * @throws {ProtocolError} For a Ping with a payload (checked from its
   * header), and as {@linkcode FrameReader.prototype.readFrame}.
   */
  /** Set once the handshake is done: from then on every read answers Pings. */
  answerPings = false;

  /**
   * Reads the next frame header; once {@linkcode HeartbeatReader.prototype.answerPings}
   * is set, answers every Ping before it, so that handlers reading headers
   * (chat refuses an over-long line from its header) never see one.
   *
   * @returns The header, or null if input ended cleanly between frames.
   * @throws {ProtocolError} For a Ping with a payload.
   */
  override async readHeader(): ReturnType<FrameReader["readHeader"]> {
    for (;;) {
      const header = await super.readHeader();
      if (header === null || !this.answerPings || header.type !== Kind.Ping) {
        return header;
      }
      if (header.length !== 0) {
        throw new ProtocolError(
          `Expected an empty ping frame, got ${header.length} bytes`,
        );
      }
      await this.#session.conn.write(PONG);
    }
  }

  override async readFrame(): Promise<Frame | null> {
    for (;;) {
      const header = await this.readHeader();
      if (header === null) return null;
      if (header.type !== Kind.Ping) {
        return { type: header.type, payload: await this.readPayload() };
      }
      if (header.length !== 0) {
        throw new ProtocolError(
          `Expected an empty ping frame, got ${header.length} bytes`,
        );
      }
      await this.#session.conn.write(PONG);
    }
  }
}

/** What `moat status` shows about one watched source. */
export interface SourceLiveness {
  /** Ship connections of the source open now. */
  connections: number;
  /** When the server last heard from it (server clock, ms), if this run. */
  lastSeen: number | undefined;
  /** When its record count last grew (server clock, ms), if this run. */
  lastRecord: number | undefined;
  /** Reported `source_silent` and not back yet. */
  silent: boolean;
}

/** Options for {@linkcode SourceWatch}. */
export interface SourceWatchOptions {
  /** Where `source_silent` and `source_back` go. */
  audit: AuditLog;
  /** A source not heard from for longer than this is reported silent. */
  silentAfterMs: number;
  /** The server's clock. */
  now: () => number;
}

interface Watched {
  key: SourceKey;
  source: VaultSource;
  sessions: Set<Session>;
  /** Last activity of a session that has ended, or the first attach. */
  lastSeen: number;
  lastRecord: number | undefined;
  /** Record count at the last look. */
  records: number;
  /** Set while reported silent: the last sign of life at that time. */
  silentSince: number | undefined;
}

/**
 * The vault sources that shipped since the server started, and when each
 * was last heard from: a frame on one of its connections (records or a
 * heartbeat), or the end of its last connection. The sweep reports a source
 * quiet for longer than `silentAfterMs` once (`source_silent`) and its
 * return once (`source_back`). Sources on disk that never connected in this
 * run are not watched: nothing says they should be shipping.
 *
 * The number of entries is bounded by the vault's sources.
 */
export class SourceWatch {
  #o: SourceWatchOptions;
  #watched = new Map<string, Watched>();

  /**
   * Makes an empty watch.
   *
   * @param options Audit log, silence threshold, clock.
   */
  constructor(options: SourceWatchOptions) {
    this.#o = options;
  }

  /** The silence threshold, in ms. */
  get silentAfterMs(): number {
    return this.#o.silentAfterMs;
  }

  /**
   * Counts a session as shipping into `source` until the returned function
   * is called. A source reported silent is back at once.
   *
   * @param key The source's key.
   * @param source The vault's handle of it.
   * @param session The connection that ships it.
   * @returns Detach: call it when the connection ends.
   */
  attach(key: SourceKey, source: VaultSource, session: Session): () => void {
    const now = this.#o.now();
    let w = this.#watched.get(source.id);
    if (w === undefined) {
      w = {
        key,
        source,
        sessions: new Set(),
        lastSeen: now,
        lastRecord: undefined,
        records: source.lastSeq,
        silentSince: undefined,
      };
      this.#watched.set(source.id, w);
    }
    w.sessions.add(session);
    w.lastSeen = Math.max(w.lastSeen, now);
    if (w.silentSince !== undefined) this.#back(w, now);
    const watched = w;
    return () => {
      if (!watched.sessions.delete(session)) return;
      watched.lastSeen = Math.max(watched.lastSeen, session.lastActive);
      this.#look(watched, this.#o.now());
    };
  }

  /**
   * Looks at every watched source: notes records that arrived, reports the
   * sources that went silent and those that came back.
   *
   * @param now The current time (the server's clock).
   */
  sweep(now: number): void {
    for (const w of this.#watched.values()) {
      this.#look(w, now);
      const seen = lastSeen(w);
      if (w.silentSince === undefined) {
        if (now - seen > this.#o.silentAfterMs) this.#silent(w, now, seen);
      } else if (seen > w.silentSince) {
        this.#back(w, now);
      }
    }
  }

  /**
   * What is known of a source, for `moat status`.
   *
   * @param source The vault's handle of it.
   * @returns Its liveness; a source not watched has nothing seen.
   */
  liveness(source: VaultSource): SourceLiveness {
    const w = this.#watched.get(source.id);
    if (w === undefined) {
      return {
        connections: 0,
        lastSeen: undefined,
        lastRecord: undefined,
        silent: false,
      };
    }
    this.#look(w, this.#o.now());
    return {
      connections: w.sessions.size,
      lastSeen: lastSeen(w),
      lastRecord: w.lastRecord,
      silent: w.silentSince !== undefined,
    };
  }

  /** Notes records that arrived since the last look. */
  #look(w: Watched, now: number) {
    const records = w.source.lastSeq;
    if (records !== w.records) {
      w.records = records;
      w.lastRecord = now;
    }
  }

  #silent(w: Watched, now: number, seen: number) {
    w.silentSince = seen;
    this.#o.audit.write("source_silent", {
      ...fields(w),
      lastSeen: new Date(seen).toISOString(),
      silentMs: now - seen,
      connected: w.sessions.size > 0,
    });
  }

  #back(w: Watched, now: number) {
    const since = w.silentSince!;
    w.silentSince = undefined;
    this.#o.audit.write("source_back", {
      ...fields(w),
      silentMs: now - since,
    });
  }
}

/** The latest sign of life: an ended session's, or an open one's. */
function lastSeen(w: Watched): number {
  let seen = w.lastSeen;
  for (const s of w.sessions) if (s.lastActive > seen) seen = s.lastActive;
  return seen;
}

/** The audit fields naming a source. */
function fields(w: Watched): Record<string, unknown> {
  return {
    peer: w.key.peer,
    ...(w.key.identity !== undefined && { identity: w.key.identity }),
    source: w.key.name,
    lastSeq: w.source.lastSeq,
  };
}
