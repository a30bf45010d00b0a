/**
 * Plain-text clients (`nc`, `socat`, telnet): chat lines, and `FILE:<path>`
 * answered with the file's raw bytes.
 *
 * @module
 */

import { decodeText, MAGIC } from "../protocol.ts";
import { Code, MoatError } from "../errors.ts";
import { DEFAULT_CHUNK_SIZE } from "../file_sender.ts";
import {
  chatRateOf,
  Member,
  plainMemberEncoder,
  type QueuedMember,
  relay,
} from "./chat.ts";
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

/** Options for {@linkcode servePlain}. */
export interface ServePlainOptions {
  /**
   * Serves a silent connection whose first byte turns out to be the moat
   * preamble's: a framed client that was late, not a plain one.
   */
  framed?: (head: Uint8Array) => Promise<void>;
}

/**
 * Serves a plain-text connection. `first` is its first byte, or the
 * promise of it for a client that was silent (it hears the chat at once).
 *
 * @param s The session.
 * @param first The first byte read, or the read still waiting for it.
 * @param options Where a late framed client goes.
 */
export async function servePlain(
  s: Session,
  first: Uint8Array | Promise<Uint8Array>,
  options: ServePlainOptions = {},
): Promise<void> {
  const { hub } = s.server;
  const member = new Member(s, plainMemberEncoder);
  try {
    if (!(first instanceof Promise)) {
      return await plainLines(member, first, false);
    }
    // A silent client waits to be spoken to: it hears the chat at once.
    // Nothing else is set up until it speaks.
    hub.join(member);
    const head = await first;
    if (head.length > 0 && head[0] === MAGIC[0] && options.framed) {
      // No text starts with 0x89: a framed client that was starved past the
      // detection time. It goes framed once the chat it heard meanwhile (if
      // any; it then refuses the connection) is out.
      hub.leave(member);
      await plainFlush(member);
      return await options.framed(head);
    }
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

  // Over its chat rate, a line waits (and nothing more is read) until its
  // token is spent; it is then relayed with that token.
  const rate = chatRateOf(s);
  let paid = false;

  // Completes the line; false, keeping it, when it waits for the chat rate.
  const complete = (): boolean => {
    let end = len;
    if (end > 0 && line[end - 1] === 0x0d) end--;
    const text = decodeText(line.subarray(0, end));
    if (text.startsWith("FILE:")) {
      len = 0;
      ending = plainFile(member, text.slice(5));
      return true;
    }
    if (text.length > 0 && !paid && rate !== undefined && !rate.tryTake()) {
      return false;
    }
    paid = false;
    len = 0;
    join();
    if (text.length > 0) relay(member, text);
    return true;
  };
  // Completes the line after waiting for the chat rate if it must.
  const completeInTurn = async () => {
    if (complete()) return;
    await rate!.take();
    paid = true;
    complete();
  };
  // Feeds `bytes` from `from`; returns where it stopped: their end, the
  // newline of a line that waits for the chat rate, or -1 at the line limit.
  const feed = (bytes: Uint8Array, from: number): number => {
    for (let i = from; i < bytes.length && ending === undefined; i++) {
      const b = bytes[i]!;
      if (b === 0x0a) {
        if (!complete()) return i;
        continue;
      }
      if (len === max) return -1;
      if (len === line.length) {
        const bigger = new Uint8Array(
          Math.min(max, Math.max(256, line.length * 2)),
        );
        bigger.set(line);
        line = bigger;
      }
      line[len++] = b;
    }
    return bytes.length;
  };
  // A classic client may send a message without a newline and wait: a
  // short quiet spell completes it (or, over the chat rate, tries again).
  const quietSpell = () => {
    quiet = setTimeout(() => {
      if (len > 0 && ending === undefined && !complete()) quietSpell();
    }, PLAIN_QUIET_MS);
  };

  try {
    const buf = new Uint8Array(READ_BUFFER);
    let chunk: Uint8Array = first;
    for (;;) {
      if (ending === undefined) {
        let at = feed(chunk, 0);
        while (at >= 0 && at < chunk.length && ending === undefined) {
          // The line at `at` waits for the chat rate: so does the socket.
          await rate!.take();
          paid = true;
          at = feed(chunk, at);
        }
        if (at < 0) {
          s.reason = "chat line too long";
          ending = plainFinish(
            member,
            new MoatError(
              Code.ERR_LINE_TOO_LONG,
              `Chat line exceeds the limit of ${max} bytes`,
            ),
          );
        } else if (len > 0 && ending === undefined) quietSpell();
      }
      // Once ending, this loop only discards input; the linger deadline
      // (set when the answer is out) bounds it.
      const n = await s.read(buf);
      clearTimeout(quiet);
      if (n === null) {
        if (len > 0 && ending === undefined) await completeInTurn();
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
    s.close();
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
