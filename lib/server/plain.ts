/**
 * Plain-text clients (`nc`, `socat`, telnet): chat lines, and `FILE:<path>`
 * answered with the file's raw bytes.
 *
 * @module
 */

import { decodeText } from "../protocol.ts";
import { Code, MoatError } from "../errors.ts";
import { DEFAULT_CHUNK_SIZE } from "../file_sender.ts";
import { encodePlainChat, Member, type QueuedMember, relay } from "./chat.ts";
import { serveFile } from "./get.ts";
import { READ_BUFFER, type Session } from "./session.ts";

/** A plain client's message is complete after this long without a byte. */
const PLAIN_QUIET_MS = 40;
/**
 * A plain connection that is ending (file sent, or an ERR line written) is
 * half-closed, then its input is discarded until the peer closes or this
 * long has passed: closing with unread input would reset the connection and
 * could destroy the last bytes before the peer reads them.
 */
const PLAIN_LINGER_MS = 5000;
/** Longest wait for a plain member's queued chat lines before moving on. */
const PLAIN_FLUSH_MS = 5000;

/**
 * Serves a plain-text connection. `first` is its first byte, or the
 * promise of it for a client that was silent (it hears the chat at once).
 *
 * @param s The session.
 * @param first The first byte read, or the read still waiting for it.
 */
export async function servePlain(
  s: Session,
  first: Uint8Array | Promise<Uint8Array>,
): Promise<void> {
  const { hub } = s.server;
  const member = new Member(s, encodePlainChat);
  try {
    if (!(first instanceof Promise)) {
      return await plainLines(member, first, false);
    }
    // A silent client waits to be spoken to: it hears the chat at once.
    // Nothing else is set up until it speaks.
    hub.join(member);
    const head = await first;
    if (head.length > 0) await plainLines(member, head, true);
  } finally {
    hub.leave(member);
  }
}

/**
 * Writes one `ERR <CODE> <message>` line if given (`errorLine`), half-closes,
 * and starts the linger deadline (the caller keeps discarding input until
 * EOF).
 *
 * @param s The session.
 * @param error The refusal to write first.
 */
export async function endPlain(s: Session, error?: MoatError): Promise<void> {
  if (error) await s.sendErrorLine(error);
  await s.conn.closeWrite().catch(() => {});
  s.deadline = s.server.options.now() + PLAIN_LINGER_MS;
}

/** Reads a plain connection's lines, starting with the bytes in `first`. */
async function plainLines(
  member: Member,
  first: Uint8Array,
  joined: boolean,
) {
  const s = member.session;
  const { hub, options } = s.server;
  // Joined lazily: a connection whose first line is `FILE:` never hears any
  // chat, so nothing can precede the file's bytes.
  const join = () => {
    if (!joined) hub.join(member);
    joined = true;
  };
  const max = options.maxLine;
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
      ending = plainFile(member, text.slice(5));
      return;
    }
    join();
    if (text.length > 0) relay(member, text);
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
          ending = plainFinish(
            member,
            new MoatError(
              Code.ERR_LINE_TOO_LONG,
              `Chat line exceeds the limit of ${max} bytes`,
            ),
          );
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
      const n = await s.read(buf);
      clearTimeout(quiet);
      if (n === null) {
        if (len > 0 && ending === undefined) complete();
        break;
      }
      chunk = buf.subarray(0, n);
    }
    // A request completed by EOF is still answered, and queued chat lines
    // (a --reply to the last line) still go out before the close.
    await (ending ?? plainFlush(member));
  } finally {
    clearTimeout(quiet);
  }
}

/** Answers a plain `FILE:` request with the raw bytes or one ERR line, then ends. */
async function plainFile(
  member: Member,
  requestPath: string,
): Promise<void> {
  const s = member.session;
  s.server.hub.leave(member);
  if (!(await plainFlush(member))) {
    // Chat still queued: the file's bytes cannot go out without mixing in.
    s.reason = "slow consumer";
    s.conn.close();
    return;
  }
  const sent = await serveFile(s, {
    path: requestPath,
    framed: false,
    offset: 0,
    chunkSize: DEFAULT_CHUNK_SIZE,
  })
    .catch(() => false);
  if (sent) s.reason ??= "file sent";
  await endPlain(s);
}

/** Ends a plain connection, optionally with one ERR line, after its queued chat. */
async function plainFinish(
  member: Member,
  error?: MoatError,
): Promise<void> {
  member.session.server.hub.leave(member);
  await plainFlush(member);
  await endPlain(member.session, error);
}

/** Waits (bounded) until a member's queued lines are written; false on timeout. */
async function plainFlush(member: QueuedMember): Promise<boolean> {
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
