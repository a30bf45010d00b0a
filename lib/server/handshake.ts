/**
 * The framed handshake on the server: the preamble, the Hello (capped at
 * 4 KiB from its header alone), the token challenge and its answer, and the
 * Welcome.
 *
 * @module
 */

import { encodeFrame, type Frame, type FrameReader } from "../framer.ts";
import {
  decodeHello,
  encodeJson,
  encodePreamble,
  type Hello,
  isMagicPrefix,
  Kind,
  MAGIC,
  PREAMBLE_SIZE,
  PROTOCOL_VERSION,
} from "../protocol.ts";
import {
  decodeAuth,
  encodeChallenge,
  newChallenge,
  type Token,
  verifyAnswer,
} from "../auth.ts";
import {
  Code,
  ConnectionClosedError,
  FrameTooLargeError,
  MoatError,
  ProtocolError,
} from "../errors.ts";
import { truncateText } from "../text.ts";
import { peerIdentity, type Session } from "./session.ts";

/**
 * Largest Hello or Auth payload. Until a client has completed the handshake
 * it does not get `--max-frame` (1 MiB) of the server's memory per connection.
 */
export const HANDSHAKE_FRAME_MAX = 4096;

/** A finished handshake: the client's Hello and the reader of its frames. */
export interface Handshake {
  /** What the client asked for. */
  readonly hello: Hello;
  /** The rest of its input, frame by frame. */
  readonly reader: FrameReader;
}

/**
 * Runs the server side of the handshake on a connection whose first byte
 * was the preamble's: checks the preamble and version, reads the Hello,
 * runs the token challenge if the server requires tokens, clears the
 * handshake deadline and sends the Welcome.
 *
 * A refusal the client can decode (wrong version, bad Hello, failed token)
 * is answered with the preamble and an Error frame.
 *
 * @param s The session.
 * @param reader The connection's frames, starting with the preamble.
 * @returns The Hello, or undefined after a refusal that was answered.
 * @throws {ProtocolError} For a bad preamble or an unexpected frame.
 * @throws {FrameTooLargeError} For a handshake frame over
 * {@linkcode HANDSHAKE_FRAME_MAX}, before its payload is read.
 * @throws {ConnectionClosedError} When the client leaves mid-handshake.
 */
export async function handshake(
  s: Session,
  reader: FrameReader,
): Promise<Handshake | undefined> {
  const { options } = s.server;
  const pre = await reader.readExact(PREAMBLE_SIZE);
  if (!isMagicPrefix(pre.subarray(0, MAGIC.length))) {
    throw new ProtocolError("Bad preamble: not a moat client");
  }
  const version = pre[MAGIC.length];
  if (version !== PROTOCOL_VERSION) {
    // Answer in our version so the client can decode the refusal.
    await s.conn.write(encodePreamble()).catch(() => {});
    await s.sendError(
      new MoatError(
        Code.ERR_VERSION,
        `Unsupported protocol version ${version}; this server speaks ${PROTOCOL_VERSION}`,
      ),
    );
    s.reason = `unsupported protocol version ${version}`;
    return undefined;
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
      await s.sendError(err);
    }
    throw err;
  }
  let preambleSent = false;
  if (options.auth?.tokens !== undefined) {
    if (!(await tokenAuth(s, { reader, hello }, options.auth.tokens))) {
      return undefined;
    }
    preambleSent = true;
  }
  s.deadline = undefined;
  const welcome = encodeFrame({
    type: Kind.Welcome,
    payload: encodeJson({
      server: `moat/${options.version}`,
      name: s.name,
      peer: s.peer,
      maxFrameSize: options.maxFrameSize,
      // Tells clients this server takes Ping (see liveness.ts).
      idleTimeoutMs: options.idleTimeoutMs,
    }),
  });
  const out = new Uint8Array(PREAMBLE_SIZE + welcome.length);
  out.set(encodePreamble());
  out.set(welcome, PREAMBLE_SIZE);
  await s.conn.write(preambleSent ? out.subarray(PREAMBLE_SIZE) : out);
  return { hello, reader };
}

/** Longest token name tried that the audit log shows. */
const MAX_LOGGED_NAME = 64;

/**
 * Sends the preamble and a Challenge, and checks the client's Auth answer.
 * Returns false (after an Error frame) when it does not prove a token, or
 * when its address must still wait after failed proofs (the
 * {@linkcode AuthThrottle}): then no Challenge is sent, or no proof checked.
 */
async function tokenAuth(
  s: Session,
  handshake: Handshake,
  tokens: readonly Token[],
): Promise<boolean> {
  const { audit, options, authThrottle } = s.server;
  const address = peerIdentity(s.conn.remoteAddr.hostname);
  const waiting = authThrottle.wait(address);
  if (waiting > 0) {
    await throttled(s, waiting, { preamble: true });
    return false;
  }
  const challenge = newChallenge();
  const frame = encodeFrame({
    type: Kind.Challenge,
    payload: encodeChallenge(challenge),
  });
  const out = new Uint8Array(PREAMBLE_SIZE + frame.length);
  out.set(encodePreamble());
  out.set(frame, PREAMBLE_SIZE);
  await s.conn.write(out);
  const answer = await readHandshakeFrame(handshake.reader);
  if (answer === null) {
    throw new ConnectionClosedError("Connection closed during the handshake");
  }
  if (answer.type !== Kind.Auth) {
    throw new ProtocolError(
      `Expected an auth frame, got type 0x${answer.type.toString(16)}`,
    );
  }
  const auth = decodeAuth(answer.payload);
  // Another connection from this address may have failed while this one was
  // challenged: no proof is checked while its wait runs, so connections
  // opened in parallel guess no faster than one.
  const wait = authThrottle.wait(address);
  if (wait > 0) {
    await throttled(s, wait, { preamble: false });
    return false;
  }
  const token = verifyAnswer(tokens, auth, {
    nonce: challenge.nonce,
    mode: handshake.hello.mode,
    binding: options.auth?.binding ?? "",
  });
  if (token === undefined) {
    const failures = authThrottle.failed(address);
    audit.write("auth_failed", {
      peer: s.peer,
      name: s.name,
      address,
      token: truncateText(auth.name, MAX_LOGGED_NAME),
      failures,
    });
    audit.write("refused", {
      peer: s.peer,
      name: s.name,
      reason: "token authentication failed",
    });
    await s.sendError(
      new MoatError(Code.ERR_AUTH, "token authentication failed"),
    );
    s.reason = "token authentication failed";
    return false;
  }
  authThrottle.succeeded(address);
  const id = `token:${token.name}`;
  s.identity = s.identity === undefined ? id : `${s.identity} ${id}`;
  audit.write("authenticated", {
    peer: s.peer,
    name: s.name,
    identity: s.identity,
  });
  return true;
}

/**
 * Refuses a client whose address must still wait after failed proofs:
 * ERR_AUTH_THROTTLED with the whole seconds left, after the preamble unless
 * it was sent with the Challenge already.
 */
async function throttled(
  s: Session,
  waitMs: number,
  options: { preamble: boolean },
) {
  const seconds = Math.ceil(waitMs / 1000);
  s.server.audit.write("refused", {
    peer: s.peer,
    name: s.name,
    reason: "authentication throttled",
    waitS: seconds,
  });
  if (options.preamble) await s.conn.write(encodePreamble()).catch(() => {});
  await s.sendError(
    new MoatError(
      Code.ERR_AUTH_THROTTLED,
      `Too many failed authentication attempts from this address: try again in ${seconds} s`,
    ),
  );
  s.reason = "authentication throttled";
}

/** Reads a handshake frame, refusing one over {@linkcode HANDSHAKE_FRAME_MAX} before reading its payload. */
async function readHandshakeFrame(reader: FrameReader): Promise<Frame | null> {
  const header = await reader.readHeader();
  if (header === null) return null;
  if (header.length > HANDSHAKE_FRAME_MAX) {
    throw new FrameTooLargeError(header.length, HANDSHAKE_FRAME_MAX);
  }
  return { type: header.type, payload: await reader.readPayload() };
}
