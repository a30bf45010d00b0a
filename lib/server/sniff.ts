/**
 * Telling a framed client from a plain-text one by its first byte, and
 * handing the connection to the handler that serves it.
 *
 * @module
 */

import { MAGIC } from "../protocol.ts";
import {
  Code,
  FrameTooLargeError,
  MoatError,
  ProtocolError,
} from "../errors.ts";
import { serveFramedChat } from "./chat.ts";
import { serveGets } from "./get.ts";
import { handshake } from "./handshake.ts";
import { HeartbeatReader } from "./liveness.ts";
import { endPlain, servePlain } from "./plain.ts";
import { READ_BUFFER, type Session } from "./session.ts";
import { serveShip } from "./ship.ts";
import { serveWitness } from "./witness.ts";

/** A connection that sends nothing this long is served as plain text. */
const DETECT_MS = 1000;
/** After a late detection timer, the server waits in spells of this long… */
const STALLED_SPELL_MS = 100;
/** …at most this many of them (10 s), while each fires late too. */
const STALLED_SPELLS = 100;
/** First byte of a TLS handshake record (a ClientHello). */
const TLS_HANDSHAKE = 0x16;

/**
 * Serves a connection on the main port. The first byte tells the protocol:
 * the preamble's first byte means a framed client (handshake, then get,
 * chat or ship); a TLS ClientHello on a port without TLS is refused with one
 * ERR line; anything else, or a second of silence, is plain text (refused
 * with one ERR line when {@linkcode plainRefusal} says so). A silent
 * connection whose first byte, when it comes, is the preamble's is served as
 * framed after all: a client starved of CPU may send its preamble late.
 *
 * @param s The session, just accepted.
 * @throws What the handler of the protocol throws; the caller audits it.
 */
export async function serveConnection(s: Session): Promise<void> {
  const { options } = s.server;
  // The first byte tells the protocol. It is read into a 1-byte buffer, and
  // nothing bigger exists until it arrives: a silent connection holds no
  // read buffer (idle connections must stay cheap).
  const probe = new Uint8Array(1);
  // Promise.race below observes a rejection; every path that leaves it
  // pending awaits it.
  const first = readFirst(s, probe);
  // A framed client writes its preamble at once; a plain client may write
  // nothing until it hears something, so silence means plain text.
  let armed = performance.now();
  let head = await raceTimer(first, DETECT_MS);
  let late = performance.now() - armed - DETECT_MS;
  // A timer that fired late means the event loop was stalled (a busy
  // server): bytes that are already waiting may not have been read yet.
  // Wait in short spells until one fires on time before calling a framed
  // client silent (and relaying its preamble), for at most 10 s.
  for (let i = 0; head === null && late > 50 && i < STALLED_SPELLS; i++) {
    armed = performance.now();
    head = await raceTimer(first, STALLED_SPELL_MS);
    late = performance.now() - armed - STALLED_SPELL_MS;
  }
  if (head !== null && head.length === 0) {
    s.reason ??= "peer closed before sending anything";
    return;
  }
  if (head !== null && head[0] === MAGIC[0]) return await serveFramed(s, head);
  if (head !== null && head[0] === TLS_HANDSHAKE && options.tls === undefined) {
    // A TLS ClientHello is not chat: never relay it.
    s.reason = "TLS client on a plain port";
    await endPlain(
      s,
      new MoatError(
        Code.ERR_TLS_NOT_ENABLED,
        "this server does not speak TLS on this port",
      ),
    );
    return;
  }
  const refused = plainRefusal(s);
  if (refused !== undefined) {
    s.reason = refused;
    await endPlain(
      s,
      new MoatError(
        Code.ERR_PLAIN_DISABLED,
        "plain-text mode is off on this server",
      ),
    );
    // Discard input until the peer closes or the linger deadline passes.
    if (head === null && (await first).length === 0) return;
    const buf = new Uint8Array(READ_BUFFER);
    while ((await s.read(buf)) !== null) {
      // Discarded.
    }
    return;
  }
  s.mode = "plain";
  // Returned, not awaited: a silent client's wait keeps one frame less alive.
  return servePlain(s, head ?? first, {
    framed: (late) => serveFramed(s, late),
  });
}

/**
 * Serves a framed client from its first byte on: the handshake, then get,
 * chat or ship; on a witness, witness requests only.
 */
async function serveFramed(s: Session, head: Uint8Array): Promise<void> {
  const { options } = s.server;
  s.deadline = options.now() + options.handshakeTimeoutMs;
  s.mode = "handshake";
  // Answers heartbeats after the handshake (see liveness.ts).
  const reader = new HeartbeatReader(s, {
    maxFrameSize: options.maxFrameSize,
    bufferSize: READ_BUFFER,
    prefix: head,
  });
  const done = await handshake(s, reader);
  if (done === undefined) return;
  s.mode = done.hello.mode;
  reader.answerPings = true;
  try {
    // A witness serves witness requests and nothing else.
    if (options.witness !== undefined || done.hello.mode === "witness") {
      if (done.hello.mode === "witness") return await serveWitness(s, done);
      await s.sendError(
        new MoatError(
          Code.ERR_NOT_WITNESS,
          `This server is a witness: it serves no ${done.hello.mode}`,
        ),
      );
      s.reason = `${done.hello.mode} refused: a witness`;
      return;
    }
    if (done.hello.mode === "get") return await serveGets(s, done);
    if (done.hello.mode === "ship") return await serveShip(s, done);
    return await serveFramedChat(s, done.reader);
  } catch (err) {
    // A limit the client broke is said before the close, so that it can
    // tell "too large" from a dropped connection (the ship path says it
    // itself, after acknowledging what it stored).
    if (err instanceof FrameTooLargeError) await s.sendError(err);
    throw err;
  }
}

/**
 * Whether a connection may speak plain text (chat lines, `FILE:`), on TLS
 * or plain TCP alike: yes when nothing more is asked of it than what was
 * checked before its first byte (the allowlist and, where required, a
 * client certificate); no on a port that requires a token (a plain client
 * cannot answer the challenge) or with `--no-plain`.
 *
 * @param s The session, its certificate (if required) already verified.
 * @returns The audit reason of the refusal, or undefined to serve it.
 */
export function plainRefusal(s: Session): string | undefined {
  const { options } = s.server;
  if (options.auth?.tokens !== undefined) {
    return "plain-text client refused (token required)";
  }
  if (options.witness !== undefined) {
    return "plain-text client refused (a witness)";
  }
  if (!options.plain) return "plain-text client refused (--no-plain)";
  // Fails closed: the guard refuses a missing certificate before a session
  // exists, so this never fires unless that check was skipped.
  if (options.auth?.certs !== undefined && s.identity === undefined) {
    return "plain-text client refused (no verified client certificate)";
  }
  return undefined;
}

/** Reads the first byte: resolves it (1 byte) or, at end of input, nothing. */
async function readFirst(s: Session, probe: Uint8Array): Promise<Uint8Array> {
  // A source may return 0 bytes now and then (see FrameReader); not forever.
  for (let i = 0; i < 16; i++) {
    const n = await s.read(probe);
    if (n === null) return probe.subarray(0, 0);
    if (n > 0) return probe;
  }
  throw new ProtocolError("Connection returned no data 16 times in a row");
}

/**
 * Resolves what `p` resolves, or null after `ms` if it is still pending.
 * The timer is cleared either way and never keeps the process alive.
 */
async function raceTimer<T>(p: Promise<T>, ms: number): Promise<T | null> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<null>((resolve) => {
    timer = setTimeout(() => resolve(null), ms);
    (timer as { unref?: () => void }).unref?.();
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}
