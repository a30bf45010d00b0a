/**
 * The moat server: accepts allowlisted peers, then serves framed clients
 * (get, chat) and plain-text clients (chat lines, `FILE:<path>`) on one port.
 *
 * @module
 */

import type {
  Addr,
  Conn,
  Listener,
  Net,
  ServerTlsOptions,
} from "./net/types.ts";
import { checkClientCertificate, type ClientCertPolicy } from "./tls.ts";
import {
  decodeAuth,
  encodeChallenge,
  newChallenge,
  type Token,
  verifyAnswer,
} from "./auth.ts";
import type { Allowlist } from "./allowlist.ts";
import type { Jail } from "./jail.ts";
import type { AuditLog } from "./audit.ts";
import type { Vault } from "./vault/store.ts";
import { serveSyslog, SYSLOG_SOURCE } from "./syslog_server.ts";
import { ChatHub, type ChatMember, formatChatLine } from "./chat.ts";
import {
  DEFAULT_MAX_FRAME_SIZE,
  encodeFrame,
  type Frame,
  FrameReader,
} from "./framer.ts";
import {
  type ChatLine,
  decodeGet,
  decodeHello,
  decodeShipBatch,
  decodeText,
  encodeJson,
  encodePreamble,
  encodeText,
  type ErrorBody,
  type Hello,
  isMagicPrefix,
  Kind,
  MAGIC,
  PREAMBLE_SIZE,
  PROTOCOL_VERSION,
} from "./protocol.ts";
import { DEFAULT_CHUNK_SIZE, DigestCache, sendFile } from "./file_sender.ts";
import type { DigestName } from "./digest.ts";
import {
  ConnectionClosedError,
  FrameTooLargeError,
  MoatError,
  ProtocolError,
} from "./errors.ts";
import { escapeText } from "./text.ts";

/** Options for {@linkcode Server}. */
export interface ServerOptions {
  net: Net;
  /** Addresses to listen on, e.g. ["127.0.0.1", "::1"]. */
  hosts: readonly string[];
  /** @default {4320} */
  port?: number;
  allowlist: Allowlist;
  jail: Jail;
  audit: AuditLog;
  /** Reported in the Welcome frame. */
  version: string;
  /** Most connections at once; more are refused with "busy". @default {512} */
  maxConns?: number;
  /** Close a connection idle this long. @default {300_000} */
  idleTimeoutMs?: number;
  /** A framed client must finish its handshake this soon. @default {10_000} */
  handshakeTimeoutMs?: number;
  /** Largest frame payload accepted. @default {1_048_576} */
  maxFrameSize?: number;
  /** Longest chat line, in bytes. @default {8192} */
  maxLine?: number;
  /** Serve plain-text clients. @default {true} */
  plain?: boolean;
  /** Answer every chat line with this text. */
  reply?: string;
  /** Shows each client chat line to the operator. */
  onChat?: (line: ChatLine) => void;
  /** Speak TLS 1.3 only; turns plain-text mode off. */
  tls?: ServerTlsOptions;
  /** Client authentication; tokens turn plain-text mode off. */
  auth?: ServerAuth;
  /** Accept shipped log records into this vault. */
  vault?: Vault;
  /** Also accept syslog over TCP into the vault (needs `vault`; see `lib/syslog_server.ts`). */
  syslog?: ServerSyslog;
}

/** The syslog listener of a {@linkcode Server}: plain TCP on the same hosts. */
export interface ServerSyslog {
  /** Port; 0 picks a free one. */
  port: number;
  /** Longest message accepted, in bytes; a longer one closes its connection. @default {65536} */
  maxMessage?: number;
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

/** Bytes of chat a slow member may have queued before it is dropped. */
const OUTBOX_LIMIT = 1 << 20;
/** A plain client's message is complete after this long without a byte. */
const PLAIN_QUIET_MS = 40;
/** A connection that sends nothing this long is served as plain text. */
const DETECT_MS = 1000;
/**
 * A plain connection that is ending (file sent, or an ERR line written) is
 * half-closed, then its input is discarded until the peer closes or this
 * long has passed: closing with unread input would reset the connection and
 * could destroy the last bytes before the peer reads them.
 */
const PLAIN_LINGER_MS = 5000;
/** Longest wait for a plain member's queued chat lines before moving on. */
const PLAIN_FLUSH_MS = 5000;
/** Ship batches a connection may have waiting for the vault at once. */
const SHIP_IN_FLIGHT = 8;
/**
 * A refused connection's notice is followed by a drain of what the peer sent
 * (closing with unread input resets the connection, and `nc` then drops the
 * line unread), for at most this long (plus one sweep tick).
 */
const REFUSAL_LINGER_MS = 1000;
/** The one buffer every refused connection's input is drained into. */
const DISCARD = new Uint8Array(4096);

/** First byte of a TLS handshake record (a ClientHello). */
const TLS_HANDSHAKE = 0x16;
/** Server-side read buffer: small, because idle connections must stay cheap. */
const READ_BUFFER = 4096;

/** Formats an address as "host:port" ("[v6]:port" for IPv6). */
export function formatAddr(addr: Addr): string {
  return addr.hostname.includes(":")
    ? `[${addr.hostname}]:${addr.port}`
    : `${addr.hostname}:${addr.port}`;
}

const RESOLVED: Promise<void> = Promise.resolve();

/**
 * Serialises writes to one session's connection: exactly one owner writes at
 * a time. Each write counts as activity. Holds no closures: an idle chat
 * member should cost little more than its socket.
 */
class Outbox {
  #s: Session;
  #chain: Promise<void> = RESOLVED;
  #pending = 0;

  constructor(s: Session) {
    this.#s = s;
  }

  /** Queues bytes; false if more than `limit` bytes are already queued. */
  push(bytes: Uint8Array, limit = Infinity): boolean {
    if (this.#pending + bytes.length > limit) return false;
    // Nothing queued: write now rather than a microtask later (chat latency).
    const idle = this.#pending === 0;
    this.#pending += bytes.length;
    this.#chain = idle
      ? this.#write(bytes)
      : this.#chain.then(() => this.#write(bytes));
    return true;
  }

  async #write(bytes: Uint8Array) {
    try {
      await this.#s.conn.write(bytes);
      this.#s.lastActive = Date.now();
    } catch {
      this.#s.conn.close();
    } finally {
      this.#pending -= bytes.length;
    }
  }

  /** Resolves when everything queued so far was written (or failed). */
  flush(): Promise<void> {
    return this.#chain;
  }

  /** Closes the session's connection; the first reason given is the one logged. */
  end(reason: string): void {
    this.#s.reason ??= reason;
    this.#s.conn.close();
  }
}

/** A chat member whose queued lines can be awaited. */
type QueuedMember = ChatMember & { flush(): Promise<void> };

/** A session in the chat hub: lines are encoded for its kind of client and queued. */
class Member extends Outbox implements QueuedMember {
  readonly name: string;
  readonly addr: string;
  #encode: (line: ChatLine) => Uint8Array;

  constructor(s: Session, encode: (line: ChatLine) => Uint8Array) {
    super(s);
    this.#encode = encode;
    this.name = s.name;
    this.addr = s.identity === undefined ? s.peer : `${s.peer} ${s.identity}`;
  }

  deliver(line: ChatLine): boolean {
    return this.push(this.#encode(line), OUTBOX_LIMIT);
  }

  drop(reason: string): void {
    this.end(reason);
  }
}

function encodeFramedChat(line: ChatLine): Uint8Array {
  return encodeFrame({ type: Kind.Chat, payload: encodeJson(line) });
}

function encodePlainChat(line: ChatLine): Uint8Array {
  return encodeText(formatChatLine(line) + "\n");
}

interface Session {
  readonly name: string;
  readonly peer: string;
  readonly conn: Conn;
  lastActive: number;
  /** Close unless the handshake is done by then (ms timestamp). */
  deadline: number | undefined;
  reason: string | undefined;
  /** Who the client proved to be (`cert:sha256:…`, `token:NAME`), if it had to. */
  identity?: string | undefined;
}

/**
 * An allowlisted moat server.
 *
 * @example Serve the current folder to loopback
 * ```ts ignore
 * const server = new Server({ net: getNet(), hosts: ["127.0.0.1"], port: 0,
 *   allowlist: compileAllowlist({}), jail: await createJail("."),
 *   audit: new AuditLog(console.error), version: "0.1.0" });
 * const [addr] = await server.listen();
 * ```
 */
export class Server {
  #o:
    & Required<
      Omit<
        ServerOptions,
        "reply" | "onChat" | "tls" | "auth" | "vault" | "syslog"
      >
    >
    & ServerOptions;
  #listeners: Listener[] = [];
  #syslogListeners: Listener[] = [];
  #sessions = new Set<Session>();
  /** Refused connections still draining, with the time they are closed regardless. */
  #refusing = new Map<Conn, number>();
  /** Refusal lines by code and reason, encoded once. */
  #notices = new Map<string, Uint8Array>();
  #hub: ChatHub;
  #cache = new DigestCache();
  #nextId = 1;
  #sweeper: ReturnType<typeof setInterval> | undefined;
  #closing = false;
  #acceptLoops: Promise<void>[] = [];
  #handlers = new Map<Conn, Promise<void>>();

  /**
   * @param options Listening addresses, guard, jail, audit log and limits.
   */
  constructor(options: ServerOptions) {
    this.#o = {
      port: 4320,
      maxConns: 512,
      idleTimeoutMs: 300_000,
      handshakeTimeoutMs: 10_000,
      maxFrameSize: DEFAULT_MAX_FRAME_SIZE,
      maxLine: 8192,
      plain: true,
      ...options,
    };
    // Nothing unauthenticated or unencrypted may share a TLS or token port.
    if (this.#o.tls !== undefined || this.#o.auth?.tokens !== undefined) {
      this.#o.plain = false;
    }
    if (this.#o.syslog !== undefined && this.#o.vault === undefined) {
      throw new TypeError("Invalid server options: syslog needs a vault");
    }
    this.#hub = new ChatHub((line) => this.#o.onChat?.(line));
  }

  /** Connections currently open. */
  get connections(): number {
    return this.#sessions.size;
  }

  /**
   * Binds every host and starts accepting.
   *
   * @returns The bound addresses.
   * @throws {AddressInUseError} When a port is taken.
   */
  async listen(): Promise<Addr[]> {
    let port = this.#o.port;
    for (const hostname of this.#o.hosts) {
      try {
        const tls = this.#o.tls;
        const l = await this.#o.net.listen({
          hostname,
          port,
          ...(tls && {
            tls: {
              ...tls,
              ...(this.#o.auth?.certs && { requestCert: true }),
              onHandshakeError: (peer: Addr, message: string) =>
                this.#o.audit.write("refused", {
                  peer: formatAddr(peer),
                  reason: `TLS handshake failed: ${message}`,
                }),
            },
          }),
        });
        // With port 0, later hosts share the port the first one got.
        if (port === 0) port = l.addr.port;
        this.#listeners.push(l);
      } catch (err) {
        for (const l of this.#listeners) l.close();
        this.#listeners = [];
        throw err;
      }
    }
    const addrs = this.#listeners.map((l) => l.addr);
    if (this.#o.syslog !== undefined) {
      await this.#listenSyslog(this.#o.syslog.port);
    }
    this.#o.audit.write("listening", {
      addrs: addrs.map(formatAddr),
      ...(this.#o.syslog &&
        { syslog: this.#syslogListeners.map((l) => formatAddr(l.addr)) }),
      allow: this.#o.allowlist.describe(),
      root: this.#o.jail.root,
      maxConns: this.#o.maxConns,
      plain: this.#o.plain,
      tls: this.#o.tls !== undefined,
      clientAuth: [
        ...(this.#o.auth?.certs ? ["certificate"] : []),
        ...(this.#o.auth?.tokens ? ["token"] : []),
      ],
    });
    for (const l of this.#listeners) this.#acceptLoops.push(this.#accept(l));
    for (const l of this.#syslogListeners) {
      this.#acceptLoops.push(this.#accept(l, "syslog"));
    }
    const tick = Math.max(
      50,
      Math.min(1000, this.#o.handshakeTimeoutMs / 4, this.#o.idleTimeoutMs / 4),
    );
    this.#sweeper = setInterval(() => this.#sweep(), tick);
    return addrs;
  }

  /** Binds the syslog port on every host (plain TCP); on failure, closes everything. */
  async #listenSyslog(port: number) {
    try {
      for (const hostname of this.#o.hosts) {
        const l = await this.#o.net.listen({ hostname, port });
        if (port === 0) port = l.addr.port;
        this.#syslogListeners.push(l);
      }
    } catch (err) {
      for (const l of [...this.#listeners, ...this.#syslogListeners]) l.close();
      this.#listeners = [];
      this.#syslogListeners = [];
      throw err;
    }
  }

  /**
   * Sends an operator line to every chat client.
   *
   * @param text The line.
   */
  say(text: string): void {
    this.#hub.announce("operator", text);
  }

  /**
   * Stops listening, closes every connection, and waits for handlers to end.
   */
  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    clearInterval(this.#sweeper);
    for (const l of this.#listeners) l.close();
    for (const l of this.#syslogListeners) l.close();
    for (const conn of this.#refusing.keys()) conn.close();
    for (const s of this.#sessions) {
      s.reason ??= "server shutting down";
      s.conn.close();
    }
    await Promise.allSettled(this.#acceptLoops);
    await Promise.allSettled([...this.#handlers.values()]);
    this.#o.audit.write("shutdown", {});
  }

  async #accept(listener: Listener, port: "main" | "syslog" = "main") {
    try {
      for await (const conn of listener) {
        if (this.#closing) {
          conn.close();
          continue;
        }
        // #handle removes its entry when done, which for a refusal is before
        // it even returns.
        this.#handlers.set(conn, RESOLVED);
        const handled = this.#handle(conn, port);
        if (this.#handlers.has(conn)) this.#handlers.set(conn, handled);
      }
    } catch (err) {
      if (!this.#closing) {
        this.#o.audit.write("error", { message: errorMessage(err) });
      }
    }
  }

  #sweep() {
    const now = Date.now();
    for (const [conn, deadline] of this.#refusing) {
      // Insertion order is deadline order: stop at the first still due later.
      if (deadline > now) break;
      this.#refusing.delete(conn);
      conn.close();
    }
    for (const s of this.#sessions) {
      if (s.deadline !== undefined && now > s.deadline) {
        s.reason ??= "handshake timeout";
        s.conn.close();
      } else if (now - s.lastActive > this.#o.idleTimeoutMs) {
        s.reason ??= "idle timeout";
        s.conn.close();
      }
    }
  }

  /**
   * Writes one short text refusal and closes. Nothing the peer sent is ever
   * interpreted, but whatever it already sent is drained (at most 64 KiB, for
   * at most a second) before the close: closing with unread input resets the
   * connection, and `nc` then drops the refusal line unread.
   */
  #refuse(
    conn: Conn,
    peer: string,
    code: string,
    reason: string,
    tag?: { port: string },
  ) {
    this.#o.audit.write("refused", { peer, reason, ...tag });
    // Floods are made of these: no timer, buffer or notice per connection.
    // The sweep closes whatever is still draining after its deadline.
    this.#refusing.set(conn, Date.now() + REFUSAL_LINGER_MS);
    const key = `${code} ${reason}`;
    let notice = this.#notices.get(key);
    if (notice === undefined) {
      notice = encodeText(`ERR ${key}\n`);
      // A few fixed lines repeat; certificate problems name dates and may
      // not, so the cache stays small whatever the peers send.
      if (this.#notices.size < 16) this.#notices.set(key, notice);
    }
    this.#drainRefused(conn, notice).catch(() => {}).finally(() => {
      this.#refusing.delete(conn);
      conn.close();
    });
  }

  async #drainRefused(conn: Conn, notice: Uint8Array) {
    await conn.write(notice);
    await conn.closeWrite();
    for (let drained = 0; drained < 65_536;) {
      // What a refused peer sent is never looked at, so every drain can share one buffer.
      const n = await conn.read(DISCARD);
      if (n === null) break;
      drained += n;
    }
  }

  /** Serves one accepted connection. Never rejects; forgets itself when done. */
  async #handle(conn: Conn, port: "main" | "syslog") {
    try {
      const peer = formatAddr(conn.remoteAddr);
      // Syslog connections are marked in every audit line about them.
      const tag = port === "syslog" ? { port } : undefined;
      if (!this.#o.allowlist.check(conn.remoteAddr.hostname)) {
        this.#refuse(
          conn,
          peer,
          "ACCESS_DENIED",
          "access refused by server",
          tag,
        );
        return;
      }
      if (this.#sessions.size >= this.#o.maxConns) {
        this.#refuse(
          conn,
          peer,
          "BUSY",
          "server busy: too many connections",
          tag,
        );
        return;
      }
      let identity: string | undefined;
      // The syslog port is plain TCP: the allowlist is its only guard.
      if (this.#o.auth?.certs && tag === undefined) {
        const verdict = checkClientCertificate(conn.tls, this.#o.auth.certs);
        if ("code" in verdict) {
          this.#refuse(conn, peer, verdict.code, verdict.reason);
          return;
        }
        identity = verdict.identity;
      }
      const session: Session = {
        name: `c${this.#nextId++}`,
        peer,
        conn,
        lastActive: Date.now(),
        deadline: undefined,
        reason: undefined,
        identity,
      };
      this.#sessions.add(session);
      this.#o.audit.write("accepted", {
        peer,
        name: session.name,
        ...(identity && { identity }),
        ...tag,
      });
      const started = Date.now();
      try {
        await (tag ? this.#syslog(session) : this.#dispatch(session));
      } catch (err) {
        if (
          !(err instanceof ConnectionClosedError) ||
          session.reason === undefined
        ) {
          session.reason ??= errorMessage(err);
          if (!(err instanceof ConnectionClosedError)) {
            this.#o.audit.write("error", {
              peer,
              name: session.name,
              code: errorCode(err),
              message: errorMessage(err),
            });
          }
        }
      } finally {
        this.#sessions.delete(session);
        conn.close();
        this.#o.audit.write("closed", {
          peer,
          name: session.name,
          ...(session.identity && { identity: session.identity }),
          reason: session.reason ?? "peer closed",
          durationMs: Date.now() - started,
          ...tag,
        });
      }
    } catch {
      // Audited where it happened; a handler never rejects.
    } finally {
      this.#handlers.delete(conn);
    }
  }

  /** Serves a connection on the syslog port (see `lib/syslog_server.ts`). */
  async #syslog(s: Session) {
    const reason = await serveSyslog({
      conn: s.conn,
      peer: s.peer,
      name: s.name,
      read: (buf) => this.#read(s, buf),
    }, {
      vault: this.#o.vault!,
      audit: this.#o.audit,
      peerKey: peerIdentity(s.conn.remoteAddr.hostname),
      ...(this.#o.syslog?.maxMessage !== undefined &&
        { maxMessage: this.#o.syslog.maxMessage }),
    });
    s.reason ??= reason;
  }

  async #dispatch(s: Session) {
    // The first byte tells the protocol. It is read into a 1-byte buffer, and
    // nothing bigger exists until it arrives: a silent connection holds no
    // read buffer (idle connections must stay cheap).
    const probe = new Uint8Array(1);
    // Promise.race below observes a rejection; every path that leaves it
    // pending awaits it.
    const first = this.#readFirst(s, probe);
    // A framed client writes its preamble at once; a plain client may write
    // nothing until it hears something, so silence means plain text.
    const armed = performance.now();
    let head = await Promise.race([first, after(DETECT_MS)]);
    if (head === null && performance.now() - armed > DETECT_MS + 50) {
      // The timer fired late, so the event loop was stalled: bytes that are
      // already waiting may not have been read yet. Give them a moment
      // before calling a framed client silent (and relaying its preamble).
      head = await Promise.race([first, after(100)]);
    }
    if (head !== null && head.length === 0) {
      s.reason ??= "peer closed before sending anything";
      return;
    }
    if (head !== null && head[0] === MAGIC[0]) {
      s.deadline = Date.now() + this.#o.handshakeTimeoutMs;
      const reader = new FrameReader(
        { read: (buf) => this.#read(s, buf) },
        {
          maxFrameSize: this.#o.maxFrameSize,
          bufferSize: READ_BUFFER,
          prefix: head,
        },
      );
      return await this.#framed(s, reader);
    }
    if (
      head !== null && head[0] === TLS_HANDSHAKE && this.#o.tls === undefined
    ) {
      // A TLS ClientHello is not chat: never relay it.
      s.reason = "TLS client on a plain port";
      await this.#endPlain(s, {
        code: "TLS_NOT_ENABLED",
        message: "this server does not speak TLS on this port",
      });
      return;
    }
    if (!this.#o.plain) {
      s.reason = "plain-text client refused (--no-plain)";
      await this.#endPlain(s, {
        code: "PLAIN_DISABLED",
        message: "plain-text mode is off on this server",
      });
      // Discard input until the peer closes or the linger deadline passes.
      if (head === null && (await first).length === 0) return;
      const buf = new Uint8Array(READ_BUFFER);
      while ((await this.#read(s, buf)) !== null) {
        // Discarded.
      }
      return;
    }
    // Returned, not awaited: a silent client's wait keeps one frame less alive.
    return this.#plain(s, head ?? first);
  }

  /** Reads the first byte: resolves it (1 byte) or, at end of input, nothing. */
  async #readFirst(s: Session, probe: Uint8Array): Promise<Uint8Array> {
    // A source may return 0 bytes now and then (see FrameReader); not forever.
    for (let i = 0; i < 16; i++) {
      const n = await s.conn.read(probe);
      s.lastActive = Date.now();
      if (n === null) return probe.subarray(0, 0);
      if (n > 0) return probe;
    }
    throw new ProtocolError("Connection returned no data 16 times in a row");
  }

  async #read(s: Session, buf: Uint8Array): Promise<number | null> {
    const n = await s.conn.read(buf);
    s.lastActive = Date.now();
    return n;
  }

  #touch(s: Session) {
    s.lastActive = Date.now();
  }

  async #sendError(s: Session, body: ErrorBody) {
    await s.conn.write(
      encodeFrame({ type: Kind.Error, payload: encodeJson(body) }),
    )
      .catch(() => {});
  }

  async #framed(s: Session, reader: FrameReader) {
    const pre = await reader.readExact(PREAMBLE_SIZE);
    if (!isMagicPrefix(pre.subarray(0, MAGIC.length))) {
      throw new ProtocolError("Bad preamble: not a moat client");
    }
    const version = pre[MAGIC.length];
    if (version !== PROTOCOL_VERSION) {
      // Answer in our version so the client can decode the refusal.
      await s.conn.write(encodePreamble()).catch(() => {});
      await this.#sendError(s, {
        code: "ERR_VERSION",
        message:
          `Unsupported protocol version ${version}; this server speaks ${PROTOCOL_VERSION}`,
      });
      s.reason = `unsupported protocol version ${version}`;
      return;
    }
    let hello: Hello;
    try {
      const frame = await readHandshakeFrame(reader);
      if (frame === null) {
        throw new ConnectionClosedError(
          "Connection closed during the handshake",
        );
      }
      if (frame.type !== Kind.Hello) {
        throw new ProtocolError(
          `Expected a hello frame, got type 0x${frame.type.toString(16)}`,
        );
      }
      hello = decodeHello(frame.payload);
    } catch (err) {
      if (err instanceof MoatError || err instanceof RangeError) {
        await s.conn.write(encodePreamble()).catch(() => {});
        await this.#sendError(s, {
          code: errorCode(err),
          message: errorMessage(err),
        });
      }
      throw err;
    }
    let preambleSent = false;
    if (this.#o.auth?.tokens !== undefined) {
      if (!(await this.#tokenAuth(s, reader, hello, this.#o.auth.tokens))) {
        return;
      }
      preambleSent = true;
    }
    s.deadline = undefined;
    const welcome = encodeFrame({
      type: Kind.Welcome,
      payload: encodeJson({
        server: `moat/${this.#o.version}`,
        name: s.name,
        peer: s.peer,
        maxFrameSize: this.#o.maxFrameSize,
      }),
    });
    const out = new Uint8Array(PREAMBLE_SIZE + welcome.length);
    out.set(encodePreamble());
    out.set(welcome, PREAMBLE_SIZE);
    await s.conn.write(preambleSent ? out.subarray(PREAMBLE_SIZE) : out);
    if (hello.mode === "get") return await this.#serveGets(s, reader, hello);
    if (hello.mode === "ship") return await this.#serveShip(s, reader, hello);
    return await this.#framedChat(s, reader);
  }

  /**
   * Takes shipped records into the vault and acknowledges each batch once it
   * is fsync'd. Appends are pipelined (the vault keeps their order) but at
   * most SHIP_IN_FLIGHT batches wait at once, which bounds memory.
   */
  async #serveShip(s: Session, reader: FrameReader, hello: Hello) {
    const vault = this.#o.vault;
    if (vault === undefined) {
      await this.#sendError(s, {
        code: "ERR_NO_VAULT",
        message: "This server keeps no vault (start it with --vault DIR)",
      });
      s.reason = "ship refused: no vault";
      return;
    }
    if (hello.source === SYSLOG_SOURCE) {
      // The syslog port numbers these records itself: a shipper's sequence
      // numbers in the same source would collide with them. ERR_PROTOCOL:
      // the shipper gives up instead of retrying.
      await this.#sendError(s, {
        code: "ERR_PROTOCOL",
        message:
          `Source name "${SYSLOG_SOURCE}" is reserved for the syslog port (ship with another --source)`,
      });
      s.reason = "ship refused: reserved source name";
      return;
    }
    // The peer part of the key comes from the connection, never from the
    // shipper, so one host cannot write into another host's records.
    // An authenticated identity (certificate fingerprint, token name) is
    // stronger than an address, which can be spoofed on a shared network.
    const key = {
      peer: s.identity ?? peerIdentity(s.conn.remoteAddr.hostname),
      name: hello.source!,
    };
    const source = vault.source(key);
    await s.conn.write(encodeFrame({
      type: Kind.ShipReady,
      payload: encodeJson({
        peer: key.peer,
        source: key.name,
        lastSeq: source.lastSeq,
      }),
    }));
    this.#o.audit.write("ship_started", {
      peer: s.peer,
      name: s.name,
      source: key.name,
      lastSeq: source.lastSeq,
    });
    const acks = new Outbox(s);
    const inFlight = new Set<Promise<void>>();
    // The first failure in batch order is the cause: after a failed commit
    // the vault rolls back, so batches already in flight behind it then fail
    // with a gap that is only a consequence.
    let failure: unknown;
    let failedAt = Infinity;
    let batch = 0;
    let stored = 0;
    const ack = new Uint8Array(8);
    try {
      for (;;) {
        if (failure !== undefined) break;
        const frame = await reader.readFrame();
        if (frame === null) break;
        if (frame.type !== Kind.ShipBatch) {
          throw new ProtocolError(
            `Expected a ship batch frame, got type 0x${
              frame.type.toString(16)
            }`,
          );
        }
        const records = decodeShipBatch(frame.payload);
        if (records.length === 0) continue;
        const recvTs = Date.now();
        const index = batch++;
        const p = source.append(records, { recvTs }).then(
          (seq) => {
            if (index > failedAt) return;
            stored += records.length;
            new DataView(ack.buffer).setFloat64(0, seq, true);
            acks.push(encodeFrame({ type: Kind.ShipAck, payload: ack }));
          },
          (err) => {
            if (index < failedAt) {
              failedAt = index;
              failure = err;
            }
          },
        );
        inFlight.add(p);
        p.finally(() => inFlight.delete(p));
        if (inFlight.size >= SHIP_IN_FLIGHT) await Promise.race(inFlight);
      }
      await Promise.allSettled(inFlight);
      if (failure !== undefined) throw failure;
      await acks.flush();
    } catch (err) {
      await Promise.allSettled(inFlight);
      const body = { code: errorCode(err), message: errorMessage(err) };
      // Nothing unacknowledged is lost: the shipper still holds it and resends.
      this.#o.audit.write("error", {
        peer: s.peer,
        name: s.name,
        source: key.name,
        ...body,
        during: "ship",
      });
      if (!(err instanceof ConnectionClosedError)) {
        await acks.flush();
        await this.#sendError(s, body);
      }
      s.reason = `ship ended: ${body.message}`;
    } finally {
      this.#o.audit.write("ship_finished", {
        peer: s.peer,
        name: s.name,
        source: key.name,
        records: stored,
        lastSeq: source.lastSeq,
      });
    }
  }

  /**
   * Sends the preamble and a Challenge, and checks the client's Auth answer.
   * Returns false (after an Error frame) when it does not prove a token.
   */
  async #tokenAuth(
    s: Session,
    reader: FrameReader,
    hello: Hello,
    tokens: readonly Token[],
  ): Promise<boolean> {
    const challenge = newChallenge();
    const frame = encodeFrame({
      type: Kind.Challenge,
      payload: encodeChallenge(challenge),
    });
    const out = new Uint8Array(PREAMBLE_SIZE + frame.length);
    out.set(encodePreamble());
    out.set(frame, PREAMBLE_SIZE);
    await s.conn.write(out);
    const answer = await readHandshakeFrame(reader);
    if (answer === null) {
      throw new ConnectionClosedError("Connection closed during the handshake");
    }
    if (answer.type !== Kind.Auth) {
      throw new ProtocolError(
        `Expected an auth frame, got type 0x${answer.type.toString(16)}`,
      );
    }
    const token = verifyAnswer(tokens, decodeAuth(answer.payload), {
      nonce: challenge.nonce,
      mode: hello.mode,
      binding: this.#o.auth?.binding ?? "",
    });
    if (token === undefined) {
      this.#o.audit.write("refused", {
        peer: s.peer,
        name: s.name,
        reason: "token authentication failed",
      });
      await this.#sendError(s, {
        code: "ERR_AUTH",
        message: "token authentication failed",
      });
      s.reason = "token authentication failed";
      return false;
    }
    const id = `token:${token.name}`;
    s.identity = s.identity === undefined ? id : `${s.identity} ${id}`;
    this.#o.audit.write("authenticated", {
      peer: s.peer,
      name: s.name,
      identity: s.identity,
    });
    return true;
  }

  async #serveGets(s: Session, reader: FrameReader, hello: Hello) {
    for (;;) {
      const frame = await reader.readFrame();
      if (frame === null) return;
      if (frame.type !== Kind.Get) {
        throw new ProtocolError(
          `Expected a get frame, got type 0x${frame.type.toString(16)}`,
        );
      }
      const req = decodeGet(frame.payload);
      const ok = await this.#serveFile(s, req.path, {
        framed: true,
        offset: req.offset,
        digest: req.digest,
        chunkSize: Math.min(DEFAULT_CHUNK_SIZE, hello.maxFrameSize),
      });
      if (!ok) return;
    }
  }

  /** Sends one file; on a refusal, tells the client (frame or ERR line). */
  async #serveFile(
    s: Session,
    requestPath: string,
    opts: {
      framed: boolean;
      offset: number;
      chunkSize: number;
      digest?: DigestName;
    },
  ): Promise<boolean> {
    const started = Date.now();
    this.#o.audit.write("get_started", {
      peer: s.peer,
      name: s.name,
      path: requestPath,
      offset: opts.offset,
      mode: opts.framed ? "framed" : "plain",
    });
    let file;
    try {
      file = await this.#o.jail.open(requestPath);
      if (opts.offset > file.size) {
        throw new MoatError(
          "ERR_BAD_OFFSET",
          `Resume offset ${opts.offset} is past the end of "${file.path}" (${file.size} bytes)`,
        );
      }
    } catch (err) {
      file?.close();
      const body = { code: errorCode(err), message: errorMessage(err) };
      this.#o.audit.write("error", {
        peer: s.peer,
        name: s.name,
        path: requestPath,
        ...body,
      });
      if (opts.framed) await this.#sendError(s, body);
      else await s.conn.write(plainErrorLine(body)).catch(() => {});
      s.reason = `refused path: ${body.code}`;
      return false;
    }
    try {
      const result = await sendFile(s.conn, file, {
        offset: opts.offset,
        chunkSize: opts.chunkSize,
        framed: opts.framed,
        ...(opts.digest && { digest: opts.digest }),
        cache: this.#cache,
        onProgress: () => this.#touch(s),
      });
      this.#o.audit.write("get_finished", {
        peer: s.peer,
        name: s.name,
        path: file.path,
        bytes: result.bytes,
        size: file.size,
        ...(result.digest && { [result.digestName]: result.digest }),
        durationMs: Date.now() - started,
      });
      return true;
    } catch (err) {
      const body = { code: errorCode(err), message: errorMessage(err) };
      this.#o.audit.write("error", {
        peer: s.peer,
        name: s.name,
        path: file.path,
        ...body,
        during: "transfer",
      });
      if (opts.framed && !(err instanceof ConnectionClosedError)) {
        await this.#sendError(s, body);
      }
      s.reason = `transfer aborted: ${body.message}`;
      return false;
    } finally {
      file.close();
    }
  }

  #relay(member: ChatMember, text: string) {
    // Writes are started first and the audit line written after, in the same
    // turn: a crash cannot fall between them, and the answer does not wait
    // for the log's syscall.
    if (this.#o.reply !== undefined) {
      this.#hub.announce("server", this.#o.reply, member);
    }
    this.#hub.say(member, text);
    this.#o.audit.write("chat", { peer: member.addr, name: member.name, text });
  }

  async #framedChat(s: Session, reader: FrameReader) {
    const member = new Member(s, encodeFramedChat);
    this.#hub.join(member);
    try {
      for (;;) {
        const frame = await reader.readFrame();
        if (frame === null) return;
        if (frame.type !== Kind.Chat) {
          throw new ProtocolError(
            `Expected a chat frame, got type 0x${frame.type.toString(16)}`,
          );
        }
        if (frame.payload.length > this.#o.maxLine) {
          await this.#sendError(s, {
            code: "ERR_LINE_TOO_LONG",
            message:
              `Chat line of ${frame.payload.length} bytes exceeds the limit of ${this.#o.maxLine}`,
          });
          s.reason = "chat line too long";
          return;
        }
        this.#relay(member, decodeText(frame.payload));
      }
    } finally {
      this.#hub.leave(member);
    }
  }

  /**
   * Serves a plain-text connection. `first` is its first byte, or the
   * promise of it for a client that was silent (it hears the chat at once).
   */
  async #plain(s: Session, first: Uint8Array | Promise<Uint8Array>) {
    const member = new Member(s, encodePlainChat);
    try {
      if (!(first instanceof Promise)) {
        return await this.#plainLines(s, member, first, false);
      }
      // A silent client waits to be spoken to: it hears the chat at once.
      // Nothing else is set up until it speaks.
      this.#hub.join(member);
      const head = await first;
      if (head.length > 0) await this.#plainLines(s, member, head, true);
    } finally {
      this.#hub.leave(member);
    }
  }

  /** Reads a plain connection's lines, starting with the bytes in `first`. */
  async #plainLines(
    s: Session,
    member: Member,
    first: Uint8Array,
    joined: boolean,
  ) {
    // Joined lazily: a connection whose first line is `FILE:` never hears any
    // chat, so nothing can precede the file's bytes.
    const join = () => {
      if (!joined) this.#hub.join(member);
      joined = true;
    };
    const max = this.#o.maxLine;
    // Allocated with the first byte: a silent client holds no buffer.
    let line = new Uint8Array(0);
    let len = 0;
    let quiet: ReturnType<typeof setTimeout> | undefined;
    // Set once the connection is ending (`FILE:` or an ERR line): the rest of
    // the input is discarded.
    let ending: Promise<void> | undefined;

    const complete = () => {
      let end = len;
      if (end > 0 && line[end - 1] === 0x0d) end--;
      const text = decodeText(line.subarray(0, end));
      len = 0;
      if (text.startsWith("FILE:")) {
        ending = this.#plainFile(s, member, text.slice(5));
        return;
      }
      join();
      if (text.length > 0) this.#relay(member, text);
    };
    // Returns false when the line limit was hit.
    const feed = (bytes: Uint8Array): boolean => {
      for (let i = 0; i < bytes.length && ending === undefined; i++) {
        const b = bytes[i]!;
        if (b === 0x0a) {
          complete();
          continue;
        }
        if (len === max) return false;
        if (len === line.length) {
          const bigger = new Uint8Array(
            Math.min(max, Math.max(256, line.length * 2)),
          );
          bigger.set(line);
          line = bigger;
        }
        line[len++] = b;
      }
      return true;
    };

    try {
      const buf = new Uint8Array(READ_BUFFER);
      let chunk: Uint8Array = first;
      for (;;) {
        if (ending === undefined) {
          if (!feed(chunk)) {
            s.reason = "chat line too long";
            ending = this.#plainFinish(s, member, {
              code: "ERR_LINE_TOO_LONG",
              message: `Chat line exceeds the limit of ${max} bytes`,
            });
          } else if (len > 0 && ending === undefined) {
            // A classic client may send a message without a newline and wait:
            // a short quiet spell completes it.
            quiet = setTimeout(() => {
              if (len > 0 && ending === undefined) complete();
            }, PLAIN_QUIET_MS);
          }
        }
        // Once ending, this loop only discards input; the linger deadline
        // (set when the answer is out) bounds it.
        const n = await this.#read(s, buf);
        clearTimeout(quiet);
        if (n === null) {
          if (len > 0 && ending === undefined) complete();
          break;
        }
        chunk = buf.subarray(0, n);
      }
      // A request completed by EOF is still answered, and queued chat lines
      // (a --reply to the last line) still go out before the close.
      await (ending ?? this.#plainFlush(member));
    } finally {
      clearTimeout(quiet);
    }
  }

  /** Answers a plain `FILE:` request with the raw bytes or one ERR line, then ends. */
  async #plainFile(
    s: Session,
    member: QueuedMember,
    requestPath: string,
  ): Promise<void> {
    this.#hub.leave(member);
    if (!(await this.#plainFlush(member))) {
      // Chat still queued: the file's bytes cannot go out without mixing in.
      s.reason = "slow consumer";
      s.conn.close();
      return;
    }
    const sent = await this.#serveFile(s, requestPath, {
      framed: false,
      offset: 0,
      chunkSize: DEFAULT_CHUNK_SIZE,
    })
      .catch(() => false);
    if (sent) s.reason ??= "file sent";
    await this.#endPlain(s);
  }

  /** Ends a plain connection, optionally with one ERR line, after its queued chat. */
  async #plainFinish(
    s: Session,
    member: QueuedMember,
    error?: ErrorBody,
  ): Promise<void> {
    this.#hub.leave(member);
    await this.#plainFlush(member);
    await this.#endPlain(s, error);
  }

  /** Waits (bounded) until a member's queued lines are written; false on timeout. */
  async #plainFlush(member: QueuedMember): Promise<boolean> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const flushed = await Promise.race([
      member.flush().then(() => true),
      new Promise<false>((
        resolve,
      ) => (timer = setTimeout(() => resolve(false), PLAIN_FLUSH_MS))),
    ]);
    clearTimeout(timer);
    return flushed;
  }

  /**
   * Writes one `ERR <code> <message>` line if given, half-closes, and starts
   * the linger deadline (the caller keeps discarding input until EOF).
   */
  async #endPlain(s: Session, error?: ErrorBody): Promise<void> {
    if (error) await s.conn.write(plainErrorLine(error)).catch(() => {});
    await s.conn.closeWrite().catch(() => {});
    s.deadline = Date.now() + PLAIN_LINGER_MS;
  }
}

/** Characters that would break a plain-text ERR line. */
// deno-lint-ignore no-control-regex
const LINE_BREAKING = /[\x00-\x1f\x7f-\x9f\u2028\u2029]/g;

/**
 * One plain-text error line, `ERR <code> <message>\n`, with codes spelt like
 * the refusals (`ACCESS_DENIED`, not `ERR_ACCESS_DENIED`).
 */
function plainErrorLine(error: ErrorBody): Uint8Array {
  const code = error.code.startsWith("ERR_") ? error.code.slice(4) : error.code;
  return encodeText(
    `ERR ${code} ${error.message.replace(LINE_BREAKING, escapeText)}\n`,
  );
}

/**
 * Largest Hello or Auth payload. Until a client has completed the handshake
 * it does not get `--max-frame` (1 MiB) of the server's memory per connection.
 */
const HANDSHAKE_FRAME_MAX = 4096;

/** Reads a handshake frame, refusing one over {@linkcode HANDSHAKE_FRAME_MAX} before reading its payload. */
async function readHandshakeFrame(reader: FrameReader): Promise<Frame | null> {
  const header = await reader.readHeader();
  if (header === null) return null;
  if (header.length > HANDSHAKE_FRAME_MAX) {
    throw new FrameTooLargeError(header.length, HANDSHAKE_FRAME_MAX);
  }
  return { type: header.type, payload: await reader.readPayload() };
}

/** Resolves null after `ms`; the timer does not keep the process alive. */
function after(ms: number): Promise<null> {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(null), ms);
    (t as { unref?: () => void }).unref?.();
  });
}

/** The address a vault source is keyed by: IPv4-mapped IPv6 shown as IPv4. */
function peerIdentity(hostname: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(hostname);
  return m ? m[1]! : hostname.toLowerCase();
}

function errorCode(err: unknown): string {
  if (
    err && typeof err === "object" && "code" in err &&
    typeof err.code === "string"
  ) {
    return err.code;
  }
  return "ERR_INTERNAL";
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
